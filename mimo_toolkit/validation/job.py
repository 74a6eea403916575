"""The job as a whole: modules, architectures, the sequence and the data source, and the
layout against the model (:func:`check_model_fit`) and the batch (:func:`check_batch_fit`).
Single values (ranges, scheduler strings) are checked in ``values``."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..config import TRACKER_PACKAGES, JobConfig, LanguageModel, TrainConfig, TransformerArch, VisionEncoder
from ..errors import LayoutError, UserError
from ..layout import MimoParallelismConfig
from .values import check_ranges, check_scheduler_strings

#: Ids the built-in byte tokenizer uses (runtime/datasets/tokenizers.py: 3 specials + 256 bytes).
BYTE_TOKENIZER_IDS = 259
#: ``train.recompute.<module>`` values (runtime/model/recompute.py).
RECOMPUTE_MODES = ("none", "selective", "full")
#: The synthetic dataset's text ids start here (runtime/datasets/synthetic.py, after PAD/BOS/EOS).
SYNTHETIC_FIRST_TOKEN = 3

# ---- the config by itself -----------------------------------------------------------------


def check_config(job: JobConfig) -> None:
    """Checks of the config that need no layout arithmetic."""
    _check_modules(job)
    check_ranges(job)
    for name, arch in job.model.items():
        _check_arch(name, arch)
    _check_train(job.train)
    check_scheduler_strings(job)
    _check_cluster(job)
    _check_sequence(job)
    _check_data(job)


def _check_modules(job: JobConfig) -> None:
    """The model and the layout name the same modules; one language model; freeze keys and
    placeholder ids exist."""
    layout = job.layout
    if set(job.model) != set(layout.module_parallelisms):
        raise UserError(
            f"model modules {sorted(job.model)} and layout modules {sorted(layout.module_parallelisms)} differ"
        )
    lm_name = layout.language_module
    if lm_name not in job.model or not isinstance(job.model[lm_name], LanguageModel):
        raise UserError(f"layout.language_module={lm_name!r} is not a language model in model")
    for name, arch in job.model.items():
        if name != lm_name and isinstance(arch, LanguageModel):
            raise UserError(f"model.{name}: only one language model is supported")
    valid = job.freeze_keys()
    for key in job.freeze:
        if key not in valid:
            raise UserError(f"freeze.{key}: unknown part; valid: {', '.join(valid)}")
    for name in job.encoders:
        if name not in layout.special_token_ids:
            raise UserError(f"layout.special_token_ids has no placeholder id for {name!r}")
    if all(job.is_frozen(part) for part in valid):
        raise UserError("freeze: every module and projector is frozen; there is nothing to train")
    for name, mode in job.train.recompute.items():
        if name not in job.model:
            raise UserError(f"train.recompute.{name}: unknown module; valid: {', '.join(job.model)}")
        if mode not in RECOMPUTE_MODES:
            raise UserError(f"train.recompute.{name}={mode!r}: expected one of {', '.join(RECOMPUTE_MODES)}")


def _check_arch(name: str, arch: TransformerArch) -> None:
    """Divisibility inside one architecture (the ranges are checked already)."""
    if arch.hidden_size % arch.num_attention_heads:
        raise UserError(
            f"model.{name}.hidden_size={arch.hidden_size} is not divisible by "
            f"model.{name}.num_attention_heads={arch.num_attention_heads}"
        )
    if arch.num_attention_heads % arch.query_groups:
        raise UserError(
            f"model.{name}.num_attention_heads={arch.num_attention_heads} is not divisible by "
            f"model.{name}.num_query_groups={arch.query_groups}"
        )
    if isinstance(arch, VisionEncoder) and not 1 <= arch.built_layers <= arch.num_layers:
        raise UserError(
            f"model.{name}.feature_layer={arch.feature_layer} must be in [1, {arch.num_layers}] or "
            f"[-{arch.num_layers}, -1] (model.{name}.num_layers={arch.num_layers})"
        )
    if isinstance(arch, VisionEncoder) and arch.image_size % arch.patch_size:
        raise UserError(
            f"model.{name}.image_size={arch.image_size} is not a multiple of "
            f"model.{name}.patch_size={arch.patch_size}"
        )


def _check_train(t: TrainConfig) -> None:
    if t.min_lr > t.lr:
        raise UserError(f"train.min_lr={t.min_lr} exceeds train.lr={t.lr} (the schedule decays from lr to min_lr)")
    _check_loggers(t.loggers or [])


def _check_loggers(names: list[str]) -> None:
    """Named trackers must be known and importable (found without importing them)."""
    import importlib.util

    for name in names:
        if name not in TRACKER_PACKAGES:
            raise UserError(f"train.loggers: unknown logger {name!r}; expected any of {', '.join(TRACKER_PACKAGES)}")
    for name in names:
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"train.loggers={name}: the {package!r} package is not installed "
                f"(pip install 'mimo-toolkit[{name}]', where the job runs too)"
            )


def _check_cluster(job: JobConfig) -> None:
    cluster = job.cluster
    if cluster.gpus_per_node and cluster.procs_per_node > cluster.gpus_per_node:
        raise UserError(
            f"cluster.procs_per_node={cluster.procs_per_node} exceeds "
            f"cluster.gpus_per_node={cluster.gpus_per_node} (one process per GPU)"
        )
    lm, pp = job.layout.language_module, job.layout.language.pp
    if job.language_model.tie_embeddings and pp > 1 and cluster.gpus_per_node == 0:
        raise UserError(
            f"model.{lm}.tie_embeddings with layout.{lm}.pp={pp} needs GPUs (megatron-core 0.16.1 moves the "
            f"last stage's embedding copy to CUDA); use pp=1 on CPU"
        )
    _check_slurm_settings(job)


_AFTER = re.compile(r"(\d+(?:_\d+)?)(?::(afterok|afterany|afternotok))?")


def _check_slurm_settings(job: JobConfig) -> None:
    """Extra flags, the typed dependency and the hetjob groups (launch.md in docs/cli.md)."""
    cluster = job.cluster
    for key in ("sbatch_extra", "srun_extra"):
        for flag in getattr(cluster, key):
            if not flag.startswith("--") or len(flag) < 3 or re.search(r"[\x00-\x1f\x7f]", flag):
                raise UserError(
                    f"cluster.{key} entry {flag!r}: expected one --flag or --flag=value on one line"
                )
    if cluster.after is not None:
        if not _AFTER.fullmatch(cluster.after):
            raise UserError(
                f"cluster.after={cluster.after!r}: expected JOBID[:afterok|afterany|afternotok], e.g. 1234:afterok"
            )
        if cluster.dependency:
            raise UserError("cluster.after and cluster.dependency both set: use one (cluster.after is the typed form)")
    for module, group in cluster.groups.items():
        if module not in job.model:
            raise UserError(f"cluster.groups.{module}: no module {module!r} (modules: {', '.join(job.model)})")
        if group.gpus_per_node is not None and group.gpus_per_node < 0:
            raise UserError(f"cluster.groups.{module}.gpus_per_node={group.gpus_per_node} must be >= 0")
    if cluster.hetjob and job.layout.deployment_mode != "heterogeneous":
        raise UserError(
            f"cluster.hetjob=true needs layout.mode=heterogeneous (modules on their own nodes), "
            f"not {job.layout.deployment_mode}"
        )


def check_slurm_launch(job: JobConfig) -> None:
    """What a Slurm batch script needs beyond a valid job (``--scheduler slurm`` only: other
    schedulers ignore these fields)."""
    cluster = job.cluster
    if cluster.gpus_per_node and cluster.hetjob and not cluster.cpus_per_task:
        raise UserError(
            f"cluster.hetjob with cluster.gpus_per_node={cluster.gpus_per_node} needs cluster.cpus_per_task "
            f"(CPUs for all ranks of a node; the components' nodes may differ, so the node's count is not used)"
        )
    if cluster.gpus_per_node and not (cluster.exclusive or cluster.cpus_per_task):
        raise UserError(
            f"cluster.gpus_per_node={cluster.gpus_per_node} with neither cluster.exclusive nor cluster.cpus_per_task: "
            f"Slurm would give the node's {cluster.procs_per_node} ranks one CPU; set cluster.exclusive=true "
            f"(whole nodes) or cluster.cpus_per_task=N (CPUs for all ranks of a node)"
        )
    if cluster.container_image and cluster.venv and not _mounted_at_same_path(cluster.venv, cluster.container_mounts):
        raise UserError(
            f"cluster.venv={cluster.venv} is activated on the host and reaches the container only through PATH: "
            f"mount it at the same path (add {cluster.venv}:{cluster.venv} to cluster.container_mounts), or for a "
            f"venv inside the image leave cluster.venv unset and set cluster.python to its interpreter"
        )


def _mounted_at_same_path(path: str, mounts: list[str]) -> bool:
    """Whether a SRC:DST[:FLAGS] mount (SRC == DST) covers ``path``."""
    target = PurePosixPath(path)
    for mount in mounts:
        src, _, rest = mount.partition(":")
        dst = rest.partition(":")[0] or src
        if src == dst and target.is_relative_to(PurePosixPath(dst)):
            return True
    return False


def _check_sequence(job: JobConfig) -> None:
    """The sequence fits the position embedding and leaves room for text."""
    lm, seq = job.language_model, job.train.seq_length
    if seq > lm.max_sequence_length:
        raise UserError(
            f"train.seq_length={seq} exceeds "
            f"model.{job.layout.language_module}.max_sequence_length={lm.max_sequence_length}"
        )
    placeholders = sum(a.tokens_per_sample for a in job.encoders.values())
    if placeholders >= seq:
        raise UserError(
            f"train.seq_length={seq} leaves no room for text: the encoders "
            f"put {placeholders} placeholder tokens in every sample"
        )


def _check_data(job: JobConfig) -> None:
    """The data source can feed this model: placeholder ids apart from text ids, and for
    LLaVA-style files a path, one encoder per tag, RGB images and a vocabulary the byte
    tokenizer fits."""
    data, lm_name, vocab = job.data, job.layout.language_module, job.language_model.vocab_size
    ids = job.layout.special_token_ids
    for name in job.encoders:
        if 0 <= ids[name] < vocab:
            raise UserError(
                f"layout.special_token_ids.{name}={ids[name]} is a text id (0 <= id < model.{lm_name}.vocab_size="
                f"{vocab}); use a negative id (LLaVA uses -200)"
            )
        other = next((n for n in job.encoders if n != name and ids[n] == ids[name]), None)
        if other:
            raise UserError(f"layout.special_token_ids.{name}={ids[name]} is also {other}'s; each encoder needs its own")
    if data.source == "synthetic" and vocab <= SYNTHETIC_FIRST_TOKEN:
        raise UserError(f"model.{lm_name}.vocab_size={vocab} must be > {SYNTHETIC_FIRST_TOKEN} (synthetic text ids start there)")
    if data.source != "llava":
        return
    if not data.path:
        raise UserError("data.source=llava needs data.path (a LLaVA-style JSON or JSONL file)")
    if job.train.eval_interval and not data.valid_path:
        raise UserError(f"train.eval_interval={job.train.eval_interval} needs data.valid_path (or eval_interval=0)")
    if data.tokenizer == "byte" and vocab < BYTE_TOKENIZER_IDS:
        raise UserError(
            f"model.{lm_name}.vocab_size={vocab}: data.tokenizer=byte needs >= {BYTE_TOKENIZER_IDS} ids"
        )
    kinds: dict[str, str] = {}
    for name, arch in job.encoders.items():
        if arch.KIND in kinds:
            raise UserError(
                f"data.source=llava maps one encoder per kind; {name} and {kinds[arch.KIND]} are both {arch.KIND}"
            )
        kinds[arch.KIND] = name
        if isinstance(arch, VisionEncoder) and arch.num_channels != 3:
            raise UserError(f"model.{name}.num_channels={arch.num_channels}: data.source=llava loads images as RGB (3)")


# ---- the layout against the model and the batch -------------------------------------------


def check_model_fit(job: JobConfig) -> None:
    """TP divides heads (and query groups), PP divides layers, CP splits the sequence, and
    the runtime supports the layout. Needs no resolved DP, so it runs before the layout's
    ``finalize``."""
    layout, train = job.layout, job.train
    layout.check_sizes()
    for name, m in layout.module_parallelisms.items():
        arch = job.model[name]
        if arch.num_attention_heads % m.tp:
            raise LayoutError(
                f"layout.{name}.tp={m.tp} does not divide model.{name}.num_attention_heads={arch.num_attention_heads}"
            )
        if arch.query_groups % m.tp:
            raise LayoutError(f"layout.{name}.tp={m.tp} does not divide model.{name}.num_query_groups={arch.query_groups}")
        if arch.num_layers % m.pp:
            raise LayoutError(f"layout.{name}.pp={m.pp} does not divide model.{name}.num_layers={arch.num_layers}")
        if m.cp > 1 and name != layout.language_module:
            raise LayoutError(f"layout.{name}.cp={m.cp}: context parallelism applies to the language module only")
        if m.cp > 1 and train.seq_length % (2 * m.cp):
            raise LayoutError(
                f"layout.{name}.cp={m.cp}: train.seq_length={train.seq_length} must be divisible by 2*cp={2 * m.cp}"
            )
    check_runtime_support(layout)


def check_runtime_support(layout: MimoParallelismConfig) -> None:
    """What the runtime can build, beyond the arithmetic. The provider calls this too
    (``MimoModelProvider.finalize``), so a layout passes here exactly when the job accepts it."""
    for name, m in layout.module_parallelisms.items():
        if name != layout.language_module and m.pp > 1:
            shared = " (homogeneous modules share the LLM's pp: use colocated to pipeline only the LLM)"
            raise LayoutError(
                f"layout.{name}.pp={m.pp}: encoders run as one pipeline stage (megatron-core 0.16.1's CLIPViTModel "
                f"has no stages); use tp or dp" + (shared if layout.deployment_mode == "homogeneous" else "")
            )
        if m.cp > 1:
            raise LayoutError(
                f"layout.{name}.cp={m.cp}: context parallelism is not implemented by the runtime (it does not split "
                f"the sequence per cp rank); split the language model with tp or pp instead"
            )
        if m.ep > 1:
            raise LayoutError(f"layout.{name}.ep={m.ep}: expert parallelism needs mixture-of-experts layers, which no "
                              f"model here has")


def check_batch_fit(job: JobConfig) -> None:
    """After the layout's ``finalize``: the global batch is accumulated from global
    micro-batches of ``mbs x llm.dp`` samples; every module's replicas take equal contiguous
    slices of each global micro-batch."""
    layout, train = job.layout, job.train
    lm_name = layout.language_module
    lm_dp = layout.language.dp
    mbs, gbs = train.micro_batch_size, train.global_batch_size
    per_micro = mbs * lm_dp
    if gbs % per_micro:
        raise LayoutError(
            f"train.global_batch_size={gbs} is not divisible by train.micro_batch_size={mbs} x "
            f"layout.{lm_name}.dp={lm_dp} = {per_micro}"
        )
    for name in layout.encoder_names:
        dp = layout.module_parallelisms[name].dp
        if per_micro % dp:
            raise LayoutError(
                f"layout.{name}.dp={dp} cannot split a micro-batch of train.micro_batch_size={mbs} x "
                f"layout.{lm_name}.dp={lm_dp} = {per_micro} samples evenly; use a micro_batch_size "
                f"divisible by {dp // lm_dp}"
            )
