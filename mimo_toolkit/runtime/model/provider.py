"""The MIMO model provider: per-module HyperCommGrids, process groups, rank roles, freezing,
and per-module data parallelism, on megatron-core 0.16.1.

API follows Megatron-Bridge's ``MimoModelProvider`` (``provide()`` returns only the model;
``build_infra()`` returns grids, topology and process groups separately), with what 0.16.1
lacks owned here:

* rank roles: :class:`RankLocalMimoModel` builds only the modules this rank takes part in
  (an encoder rank holds no LLM weights and vice versa), and only its pipeline stage;
* layout-independent initialisation (``mimo_toolkit.runtime.model.init``);
* a data-parallel path that works over gloo on CPU (``mimo_toolkit.runtime.parallel.data_parallel``).
"""

from __future__ import annotations

import copy
import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core.hyper_comm_grid import HyperCommGrid
from megatron.core.models.mimo import MimoModel, MimoModelConfig
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from ...config import JobConfig
from ...layout import MimoParallelismConfig
from ...hf.pretrained import ModuleImport, pretrained_import
from ...validation import check_runtime_support
from ..parallel import grids
from ..parallel.data_parallel import wrap_data_parallel
from . import hf_import
from .init import init_module
from .portable import make_rotary_portable
from .specs import ENCODER_KEY, Backend, detect_backend, mimo_specs

Hook = Callable[[list[torch.nn.Module]], list[torch.nn.Module]]


@dataclass
class MimoModelInfra:
    """MIMO infrastructure metadata, kept apart from the model."""

    module_to_grid_map: dict[str, HyperCommGrid]
    """A HyperCommGrid per module (dims tp, cp, dp, pp, innermost first)."""
    topology: dict[str, list[str]]
    """Module data flow: module -> modules it feeds (encoders -> the LLM)."""
    pg_collections: dict[str, ProcessGroupCollection | None]
    """A ProcessGroupCollection per module; None where this rank does not take part."""
    participating_modules: list[str]
    """Modules this rank takes part in, in declaration order."""


class RankLocalMimoModel(MimoModel):
    """megatron-core's MimoModel, building only the modules (and stage) this rank holds.

    ``modality_submodules`` holds this rank's encoders; ``language_model`` is this rank's
    LLM pipeline stage, or None on encoder-only ranks.
    """

    def __init__(self, mimo_config: MimoModelConfig, participating: Sequence[str], language_module: str,
                 pretrained_language_model: bool = False) -> None:
        self._participating = set(participating)
        self._language_module = language_module
        self._pretrained_language_model = pretrained_language_model
        super().__init__(mimo_config)

    def _initialize_submodules(self) -> None:
        for name, spec in self.mimo_config.modality_submodules_spec.items():
            if name in self._participating:
                self.modality_submodules[name] = spec.module.from_spec(spec)

    def _initialize_language_model(self) -> None:
        self.language_model = None
        if self._language_module not in self._participating:
            return
        if not self._pretrained_language_model:
            self.language_model = build_module(self.mimo_config.language_model_spec)
            return
        # Every parameter comes from the checkpoint (hf_import): skip megatron-core's CPU
        # initialisation (a full-size master weight per layer) by building on the meta device.
        # GPTModel has no buffers; the RoPE table is computed on the CPU either way.
        with torch.device("meta"):
            self.language_model = build_module(self.mimo_config.language_model_spec)
        attributes = {name: dict(vars(p)) for name, p in self.language_model.named_parameters()}
        self.language_model.to_empty(device=torch.device("cpu"))  # new Parameter objects:
        for name, p in self.language_model.named_parameters():  # keep megatron-core's TP attributes
            vars(p).update(attributes[name])


@dataclass
class MimoModelProvider:
    """Builds a MIMO model with a different parallel layout per module.

    Example::

        provider = MimoModelProvider.from_job(job)
        provider.finalize()
        model = provider.provide_distributed_model()[0]
        infra = provider.get_or_build_infra()
    """

    language_model_spec: ModuleSpec
    modality_submodules_spec: dict[str, ModuleSpec] = field(default_factory=dict)
    special_token_ids: dict[str, int] = field(default_factory=dict)
    mimo_parallelism_config: MimoParallelismConfig | None = None
    freeze_language_model: bool = False
    freeze_modality_encoders: dict[str, bool] = field(default_factory=dict)
    freeze_modality_projections: dict[str, bool] = field(default_factory=dict)
    fp16: bool = False
    """Refused by :meth:`finalize` (fp16 needs a loss scaler); kept for the Bridge API."""
    bf16: bool = True
    """Cast the built model to bf16 (the optimizers keep fp32 master weights)."""
    init_model_with_meta_device: bool = False
    """Build on the meta device, then materialise on this rank's device and initialise there."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Refused by :meth:`finalize` unless None or 1."""
    seed: int = 1234
    """Seed of the layout-independent weight initialisation."""
    language_vocab_size: int | None = None
    """True (unpadded) vocabulary size; padding rows start at zero."""
    backend: Backend = "local"
    """Layer backend the specs were built for (te or local)."""
    pretrained: dict[str, ModuleImport] = field(default_factory=dict)
    """Module -> its Hugging Face checkpoint import (``model.<module>.pretrained``, docs/weights.md)."""
    import_seconds: dict[str, float] = field(default_factory=dict)
    """Module -> seconds this rank spent reading its pretrained slices (the trainer reports them)."""
    collective_timeout_s: float | None = None
    """Timeout of every process group :meth:`build_infra` creates (the job's
    ``train.timeout_s``). None: torch's per-backend default, which is NOT the world group's."""
    _cached_infra: MimoModelInfra | None = field(default=None, repr=False)
    _finalized: bool = field(default=False, repr=False)

    # ---- construction from a job --------------------------------------------------------
    @classmethod
    def from_job(cls, job: JobConfig, backend: Backend | None = None) -> "MimoModelProvider":
        backend = backend or detect_backend(gpu=_local_device().type == "cuda")  # where the model will live
        bf16 = job.train.precision == "bf16"
        specs = mimo_specs(job, backend, torch.bfloat16 if bf16 else torch.float32)
        return cls(
            language_model_spec=specs.language_model_spec,
            modality_submodules_spec=specs.modality_submodules_spec,
            special_token_ids=specs.special_token_ids,
            mimo_parallelism_config=job.layout,
            freeze_language_model=job.is_frozen(job.layout.language_module),
            freeze_modality_encoders={n: job.is_frozen(n) for n in job.encoders},
            freeze_modality_projections={n: job.is_frozen(f"{n}_projector") for n in job.encoders},
            fp16=False,
            bf16=bf16,
            seed=job.train.seed,
            language_vocab_size=job.language_model.vocab_size,
            backend=backend,
            pretrained={n: pretrained_import(job, n) for n, arch in job.model.items() if arch.pretrained},
            collective_timeout_s=job.train.timeout_s,
        )

    @property
    def _config(self) -> MimoParallelismConfig:
        if self.mimo_parallelism_config is None:
            raise ValueError("mimo_parallelism_config is required")
        return self.mimo_parallelism_config

    # ---- validation -------------------------------------------------------------------------
    def finalize(self) -> None:
        """Validate the layout against the real world size and what the runtime supports.

        Raises ValueError before any process group or model exists.
        """
        world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
        cfg = self._config
        cfg.finalize(world)
        for rank in range(world):
            if not cfg.modules_of_rank(rank):
                raise ValueError(f"rank {rank} takes part in no module")
        check_runtime_support(cfg)  # the rules show/render/the planner apply (mimo_toolkit.validation)
        if self.fp16:
            raise ValueError("fp16 needs a loss scaler, which this runtime does not have; use bf16")
        if self.virtual_pipeline_model_parallel_size not in (None, 1):
            raise ValueError("virtual pipeline stages are not supported")
        self._finalized = True

    # ---- infrastructure -----------------------------------------------------------------------
    def build_infra(self) -> MimoModelInfra:
        """Create every module's grid and process groups (a collective on every rank)."""
        if not self._finalized:
            self.finalize()
        cfg = self._config
        pg_backend = "nccl" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "gloo"
        timeout = None if self.collective_timeout_s is None else datetime.timedelta(seconds=self.collective_timeout_s)
        grid_map, pgcs = grids.build_all(cfg, pg_backend, timeout)
        rank = dist.get_rank()
        topology = {name: [cfg.language_module] for name in cfg.encoder_names}
        topology[cfg.language_module] = []
        return MimoModelInfra(grid_map, topology, pgcs, cfg.modules_of_rank(rank))

    def get_or_build_infra(self) -> MimoModelInfra:
        if self._cached_infra is None:
            self._cached_infra = self.build_infra()
        return self._cached_infra

    def initialize_model_parallel(self, *args, **kwargs) -> None:
        """Refused: MIMO creates per-module groups in :meth:`build_infra`. Global model-parallel
        state (megatron-core's ``parallel_state``) would describe one layout for all modules,
        and code reading it would silently use the wrong groups."""
        raise NotImplementedError(
            "MimoModelProvider has no global model parallelism: call finalize() and build_infra() "
            "(provide_distributed_model() does both)"
        )

    # ---- the model ----------------------------------------------------------------------------
    def _inject_language_spec(self, pgc: ProcessGroupCollection) -> ModuleSpec:
        spec = copy.deepcopy(self.language_model_spec)
        spec.params["pg_collection"] = pgc
        spec.params["pre_process"] = pgc.pp.rank() == 0
        spec.params["post_process"] = pgc.pp.rank() == pgc.pp.size() - 1
        return spec

    def _inject_modality_spec(self, spec: ModuleSpec, pgc: ProcessGroupCollection) -> ModuleSpec:
        spec = copy.deepcopy(spec)
        for encoder_spec in spec.submodules.get("encoders", {}).values():
            encoder_spec.params["pg_collection"] = pgc
        for proj_spec in spec.submodules.get("input_projections", []):
            proj_spec.params["tp_group"] = pgc.tp
        return spec

    def provide(self, pre_process=None, post_process=None, vp_stage=None) -> RankLocalMimoModel:
        """Build this rank's part of the model (on CPU unless meta-device init is requested)."""
        infra = self.get_or_build_infra()
        cfg = self._config
        pgcs = infra.pg_collections
        lm_name = cfg.language_module
        lm_spec = self._inject_language_spec(pgcs[lm_name]) if lm_name in infra.participating_modules else self.language_model_spec
        modality = {
            name: self._inject_modality_spec(spec, pgcs[name]) if name in infra.participating_modules else spec
            for name, spec in self.modality_submodules_spec.items()
        }
        mimo_config = MimoModelConfig(
            language_model_spec=lm_spec,
            modality_submodules_spec=modality,
            special_token_ids=dict(self.special_token_ids),
        )
        device = torch.device("meta") if self.init_model_with_meta_device else torch.device("cpu")
        with device:
            model = RankLocalMimoModel(mimo_config, infra.participating_modules, lm_name, self._language_model_from_meta())
        make_rotary_portable(model)
        if not self.init_model_with_meta_device:
            self.initialize_weights(model)
        self._apply_freezing(model)
        return model

    def _language_model_from_meta(self) -> bool:
        """A pretrained LLM is built on the meta device (not with tied embeddings over pipeline
        stages: megatron-core copies those between stages while building; local layers only:
        TE layers are created on the device megatron-core names, whatever the default)."""
        params = self.language_model_spec.params or {}
        tied_stages = params.get("share_embeddings_and_output_weights") and self._config.language.pp > 1
        return (self._config.language_module in self.pretrained and not self.init_model_with_meta_device
                and not tied_stages and self.backend == "local")

    def initialize_weights(self, model: RankLocalMimoModel) -> None:
        """Layout-independent initialisation of every parameter this rank holds."""
        rank = dist.get_rank()
        for name, part in _module_parts(model, self._config.language_module).items():
            par = self._config.module_parallelisms[name]
            spec = self.language_model_spec if part is model.language_model else self.modality_submodules_spec[name]
            config = spec.params["config"] if "config" in (spec.params or {}) else _encoder_config(spec, name)
            init_module(
                part,
                seed=self.seed,
                module_name=name,
                std=config.init_method_std,
                num_layers=config.num_layers,
                tp_rank=par.coordinates(rank)["tp"],  # the layout's arithmetic, as everywhere
                tp_size=par.tp,
                vocab_size=self.language_vocab_size if part is model.language_model else None,
                skip=hf_import.covered(part, self.pretrained[name]) if name in self.pretrained else (),
            )
            if name in self.pretrained:  # pretrained weights: this rank's slices only
                start = time.perf_counter()
                hf_import.load_pretrained(part, self.pretrained[name], par.coordinates(rank)["tp"], par.tp)
                self.import_seconds[name] = time.perf_counter() - start

    def _apply_freezing(self, model: RankLocalMimoModel) -> None:
        if self.freeze_language_model and model.language_model is not None:
            for p in model.language_model.parameters():
                p.requires_grad_(False)
        for name, submodule in model.modality_submodules.items():
            if self.freeze_modality_encoders.get(name, False):
                for p in submodule.encoders.parameters():
                    p.requires_grad_(False)
            if self.freeze_modality_projections.get(name, False):
                for p in submodule.input_projections.parameters():
                    p.requires_grad_(False)

    def provide_distributed_model(
        self,
        ddp_config=None,
        bf16: bool | None = None,
        wrap_with_ddp: bool = True,
        init_model_with_meta_device: bool | None = None,
        pre_wrap_hook: Hook | list[Hook] | None = None,
        post_wrap_hook: Hook | None = None,
    ) -> list[RankLocalMimoModel]:
        """Build, move to this rank's device, cast, and give every module its own data parallelism.

        Every parameter is honoured; the Bridge parameters this runtime cannot honour
        (fp16, FSDP, ``data_parallel_random_init``, a mixed-precision wrapper, ...) are not
        in the signature. The pre-wrap hooks run first, and the device move, the bf16 cast and
        the wrapping apply to the models THEY return (each must keep ``language_model`` and
        ``modality_submodules``, e.g. a MimoModel with weights loaded into it).

        Each participating module with trainable parameters gets a data-parallel wrapper over
        its OWN dp x cp group (megatron-core DDP on CUDA, ``PortableDataParallel`` over gloo
        on CPU), stored in ``model.data_parallel[name]``. The modules themselves stay in place
        (``model.language_model``, ``model.modality_submodules``) so MimoModel's own methods
        keep working; the wrappers own the fp32 ``main_grad`` buffers and their reduction.
        Gradients are SUMMED over data-parallel replicas (losses are normalised by the global
        token count), so every layout computes the same update.
        """
        if bf16 is not None:
            self.bf16 = bf16
        if init_model_with_meta_device is not None:
            self.init_model_with_meta_device = init_model_with_meta_device
        if not self._finalized:
            self.finalize()
        infra = self.get_or_build_infra()
        models = [self.provide()]
        for hook in _as_hooks(pre_wrap_hook):
            models = hook(models)
        device = _local_device()
        for model in models:
            self._to_device(model, device)
            model.data_parallel = {}
            if wrap_with_ddp:
                for name, part in _module_parts(model, self._config.language_module).items():
                    wrapper = wrap_data_parallel(part, infra.pg_collections[name], ddp_config)
                    if wrapper is not None:
                        model.data_parallel[name] = wrapper
        if post_wrap_hook is not None:
            models = post_wrap_hook(models)
        return models

    def _to_device(self, model: RankLocalMimoModel, device: torch.device) -> None:
        """Materialise (meta init) or move the model to ``device``, then cast to bf16."""
        if self.init_model_with_meta_device:
            model.to_empty(device=device)
            self.initialize_weights(model)
        else:
            model.to(device)
        if self.bf16:
            model.to(torch.bfloat16)


def _module_parts(model: RankLocalMimoModel, language_module: str) -> dict[str, torch.nn.Module]:
    """This rank's modules by name (encoder submodules and the LLM stage)."""
    parts: dict[str, torch.nn.Module] = dict(model.modality_submodules.items())
    if model.language_model is not None:
        parts[language_module] = model.language_model
    return parts


def _encoder_config(spec: ModuleSpec, name: str):
    encoders = spec.submodules["encoders"]
    enc_spec = next(iter(encoders.values()))
    return enc_spec.params["transformer_config"]


def _as_hooks(hooks) -> list[Hook]:
    if hooks is None:
        return []
    return list(hooks) if isinstance(hooks, (list, tuple)) else [hooks]


def _local_device() -> torch.device:
    if torch.cuda.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = ["ENCODER_KEY", "MimoModelInfra", "MimoModelProvider", "RankLocalMimoModel"]
