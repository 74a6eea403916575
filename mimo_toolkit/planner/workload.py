"""A job turned into the numbers the cost model needs: per-module work, batch, precision.

Freezing is read in one place, ``costs.flops.training_work`` (shared with the runtime's MFU):
each part (encoder body, its projector, the LLM) gets a work multiplier from whether it
trains and whether a trained part sits in front of it, so frozen parts cost no weight
gradients, no optimizer state and no data-parallel gradient traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..config import JobConfig, LanguageModel
from ..costs.flops import ForwardFlops, forward_flops, training_work, trunk_tokens
from ..costs.params import ParamCounts, count_params, kv_width
from ..media_counts import max_items_per_sample
from .hardware import Machine


@dataclass(frozen=True)
class Assumptions:
    """Choices the model cannot read from the config (the runtime does not expose them yet)."""

    distributed_optimizer: bool | None = None
    """Optimizer states sharded over the data-parallel (x context-parallel) group; None: the
    job's ``train.distributed_optimizer`` (on with GPUs, off on CPU unless set)."""
    overlap_grad_reduce: bool = False
    """Gradient reduction overlaps the last micro-batch's backward (Megatron --overlap-grad-reduce)."""
    recompute: Literal["auto", "never", "always"] = "auto"
    """Full activation recomputation: only where memory needs it (auto), never, or always."""


@dataclass(frozen=True)
class ModuleWork:
    """What one module costs per sample, and what of it trains."""

    name: str
    kind: str
    """llm, vision or audio (calibration rates are per kind)."""
    is_language: bool
    layers: int
    hidden: int
    heads: int
    query_groups: int
    kv: int
    ffn: int
    gated_mlp: bool
    activation: str
    """MLP activation (swiglu, gelu, quick_gelu): what the MLP keeps for its backward."""
    rms_norm: bool
    rope: bool
    vocab: int
    """Vocabulary (logits memory); 0 for encoders."""
    tokens: int
    """Tokens through the transformer layers per sample."""
    out_tokens: int
    """Embeddings handed to the LLM per sample (encoders)."""
    items_per_sample: int
    """The most media items one sample gives this encoder (``media_counts.py``): a micro-batch's
    activations are sized for it (``tokens`` and the FLOPs are per item)."""
    params: ParamCounts
    flops: ForwardFlops
    body_multiplier: int
    projector_multiplier: int
    body_trains: bool
    projector_trains: bool

    @property
    def trains(self) -> bool:
        return self.body_trains or self.projector_trains

    @property
    def needs_backward(self) -> bool:
        """The transformer layers run a backward pass, so their activations are kept (and TP,
        CP and PP communicate in both directions). A frozen encoder body whose projector
        trains does not: only the small projector runs a backward."""
        return self.body_multiplier >= 2

    @property
    def work_flops(self) -> float:
        """Forward + backward FLOPs per sample (no recomputation)."""
        return self.body_multiplier * self.flops.body + self.projector_multiplier * self.flops.projector

    def stage_work_flops(self, pp: int, recompute: bool) -> float:
        """Work FLOPs per sample on the heaviest of ``pp`` pipeline stages: a pipeline runs at
        the pace of its slowest stage, and the LM head or stem makes one end heavier.
        Full recomputation adds a forward of every part that runs a backward."""
        f = self.flops
        body = self.body_multiplier + (1 if recompute and self.body_multiplier >= 2 else 0)
        proj = self.projector_multiplier + (1 if recompute and self.projector_multiplier >= 2 else 0)
        first = body * f.first
        last = body * f.last + proj * f.projector
        return body * f.layers / pp + (first + last if pp == 1 else max(first, last))

    def stage_params(self, pp: int) -> tuple[float, float]:
        """(parameters, trainable parameters) of the heaviest pipeline stage."""
        p = self.params
        layers = p.layers / pp
        body_layers = layers if self.body_trains else 0.0
        first_train = p.first if self.body_trains else 0
        last_train = (p.last - p.projector if self.body_trains else 0) + (p.projector if self.projector_trains else 0)
        if pp == 1:
            return p.total, body_layers + first_train + last_train - (p.shared if self.body_trains else 0)
        first = (layers + p.first, body_layers + first_train)
        last = (layers + p.last, body_layers + last_train)
        return max(first, last)


@dataclass(frozen=True)
class Problem:
    """Everything the search needs about one job on one machine."""

    modules: tuple[ModuleWork, ...]
    """Encoders in declaration order, then the language model (heterogeneous rank order)."""
    language: str
    global_batch: int
    seq_length: int
    micro_batch: int
    """The recipe's micro-batch size (the search tries others too)."""
    precision: str
    nodes: int
    gpus_per_node: int
    machine: Machine
    assumptions: Assumptions = field(default_factory=Assumptions)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def encoders(self) -> tuple[ModuleWork, ...]:
        return self.modules[:-1]

    @property
    def llm(self) -> ModuleWork:
        return self.modules[-1]

    @property
    def act_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def grad_bytes(self) -> int:
        """Main gradients: fp32 for bf16 (Megatron accumulates and reduces them in fp32), fp16 for fp16."""
        return 2 if self.precision == "fp16" else 4

    @property
    def optimizer_bytes(self) -> int:
        """Adam per trained parameter: fp32 master copy + two moments (no master copy in fp32 runs)."""
        return 8 if self.precision == "fp32" else 12

    @property
    def useful_flops_per_step(self) -> float:
        return self.global_batch * sum(m.work_flops for m in self.modules)


def module_work(job: JobConfig) -> tuple[ModuleWork, ...]:
    """Per-module work of ``job``, encoders first."""
    lm = job.language_model
    seq = job.train.seq_length
    out: list[ModuleWork] = []
    for part in training_work(job):
        arch = job.model[part.name]
        is_lm = isinstance(arch, LanguageModel)
        out.append(
            ModuleWork(
                name=part.name,
                kind=arch.KIND,
                is_language=is_lm,
                layers=arch.num_layers,
                hidden=arch.hidden_size,
                heads=arch.num_attention_heads,
                query_groups=arch.query_groups,
                kv=kv_width(arch),
                ffn=arch.ffn_size,
                gated_mlp=arch.activation == "swiglu",
                activation=arch.activation,
                rms_norm=arch.normalization == "RMSNorm",
                rope=is_lm and arch.position_embedding == "rope",
                vocab=arch.vocab_size if is_lm else 0,
                tokens=trunk_tokens(arch, seq),
                out_tokens=arch.tokens_per_sample,
                items_per_sample=1 if is_lm else max_items_per_sample(job, part.name),
                params=count_params(arch, lm.hidden_size),
                flops=forward_flops(arch, lm.hidden_size, seq),
                body_multiplier=part.body_multiplier,
                projector_multiplier=part.projector_multiplier,
                body_trains=part.body_trains,
                projector_trains=part.projector_trains,
            )
        )
    return tuple(out)


def make_problem(job: JobConfig, machine: Machine, nodes: int, gpus_per_node: int,
                 assumptions: Assumptions | None = None) -> Problem:
    """The planning problem for ``job`` on ``nodes`` x ``gpus_per_node`` devices of ``machine``."""
    cpu = machine.name == "cpu"
    precision = "fp32" if cpu else job.train.precision
    assumptions = assumptions or Assumptions()
    if assumptions.distributed_optimizer is None:
        assumptions = replace(assumptions, distributed_optimizer=job.train.uses_distributed_optimizer(gpus=not cpu))
    return Problem(
        modules=module_work(job),
        language=job.layout.language_module,
        global_batch=job.train.global_batch_size,
        seq_length=job.train.seq_length,
        micro_batch=job.train.micro_batch_size,
        precision=precision,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        machine=machine,
        assumptions=assumptions,
    )
