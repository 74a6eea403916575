"""Memory per rank of one module's shard: weights, gradients, optimizer states, activations.

Weights and states (what the runtime allocates): weights in the compute dtype; an fp32
``main_grad`` buffer per trained parameter; Adam's two fp32 moments, plus fp32 master weights
when the weights are bf16 (fp32 runs update the weights in place): 4 + 4 + 8 = 16 bytes per
trained parameter in fp32, 2 + 4 + 12 = 18 in bf16, the optimizer part divided by d = dp x cp
with a distributed optimizer. Frozen parameters cost their weights only. The optimizer step
(torch's fused AdamW, on GPUs and CPUs) holds no tensor-sized temporaries.

Activations: what each layer keeps for its backward, per token and in elements of the
compute width, by backend. An encoder's tokens per sample are its tokens per item times the
most items a sample carries (``media_counts.py``: synthetic vision samples alternate 1 and 2
images, so a micro-batch may hold two per sample).

* ``te`` (GPUs, transformer-engine, flash attention; Korthikanti et al. 2022 without dropout
  masks): layer-norm inputs 2h, QKV input h, Q h, K and V 2kv, attention output h, MLP
  input h, MLP inner 2f (3f gated).
* ``local`` (megatron-core's local layers and scaled-dot-product attention, the CPU runtime):
  counted with autograd's saved-tensor hooks on the built layers (``tests/test_planner.py``
  checks the count): 5h + 3kv per layer, +2h for RMSNorm (it keeps its normalised input
  too), +h + kv for RoPE (the rotated Q and K are new tensors), and 5f for SwiGLU (the
  gate-and-up output 2f, SiLU's output, the product), 2f for GELU, 3f for quick-GELU. With
  scaled-dot-product attention no s x s matrix is kept, so megatron-core's ``selective``
  recompute saves almost nothing here (measured: the log-sum-exp); ``full`` keeps each
  layer's input (h) and, while the backward recomputes a layer, that one layer's activations.

A stage keeps the activations of the micro-batches in flight, as the schedule
(``runtime/train/schedule.py``) orders them: ``min(pp - stage, m)`` on LLM stage ``stage``
(1F1B); an encoder on the LLM's ranks keeps one when the LLM is not pipelined (each
micro-batch's backward comes before the next forward), else runs ahead of the LLM's first
stage by its depth, ``min(1 + llm pp, m)``; an encoder on ranks of its own (heterogeneous)
keeps ``ENCODER_RUN_AHEAD`` more, ``min(2 + llm pp, m)``. ``tests/test_planner.py`` checks
these counts against the schedule's operation lists. A forward-only module keeps one layer's
working set. The last LLM
stage's loss makes :data:`LOSS_COPIES` fp32 copies of its vocabulary-parallel logits at
once (``runtime/parallel/loss.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.train.schedule import ENCODER_RUN_AHEAD  # torch-free, like this module
from .workload import ModuleWork, Problem

#: fp32 logits-sized tensors alive at once in the loss's forward (logits, masked, shifted,
#: exp, softmax: ``runtime/parallel/loss.py``).
LOSS_COPIES = 5
#: Recompute modes (``train.recompute.<module>``); a bool means full (True) or none.
RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per rank."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def __add__(self, other: "MemoryBreakdown") -> "MemoryBreakdown":
        return MemoryBreakdown(
            self.weights + other.weights,
            self.gradients + other.gradients,
            self.optimizer + other.optimizer,
            self.activations + other.activations,
        )


def _mode(recompute: bool | str) -> str:
    if isinstance(recompute, bool):
        return "full" if recompute else "none"
    return recompute


def backend_of(problem: Problem) -> str:
    """``local`` on CPUs (megatron-core's local layers), ``te`` on GPUs."""
    return "local" if problem.machine.name == "cpu" else "te"


def activation_elements_per_token(w: ModuleWork, backend: str = "te") -> float:
    """Activation elements one transformer layer keeps per token (before the tp split)."""
    h, kv, f = w.hidden, w.kv, w.ffn
    if backend == "te":
        mlp_inner = (3 if w.gated_mlp else 2) * f
        return 6 * h + 2 * kv + mlp_inner
    mlp = {"swiglu": 5, "gelu": 2, "quick_gelu": 3}[w.activation] * f
    return 5 * h + 3 * kv + (2 * h if w.rms_norm else 0) + (h + kv if w.rope else 0) + mlp


def stage_layers(w: ModuleWork, pp: int) -> float:
    return w.layers / pp


def activation_bytes(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, micro_samples: int,
                     in_flight: int, recompute: bool | str, stage: int = 0) -> float:
    """Peak activation bytes of pipeline stage ``stage`` with ``in_flight`` micro-batches kept."""
    mode = _mode(recompute)
    tokens = micro_samples * w.items_per_sample * w.tokens / cp
    width = problem.act_bytes / tp
    one_layer = tokens * activation_elements_per_token(w, backend_of(problem)) * width
    last = stage == pp - 1
    logits = micro_samples * w.tokens / cp * w.vocab / tp * 4 if last else 0.0  # fp32, one copy
    if not w.needs_backward:
        return one_layer + logits * LOSS_COPIES
    layers = stage_layers(w, pp)
    per_layer = tokens * w.hidden * width if mode == "full" else one_layer
    stored = in_flight * layers * per_layer
    recomputing = one_layer if mode == "full" else 0.0
    return stored + max(recomputing, logits * LOSS_COPIES)


def _stage_params(w: ModuleWork, pp: int, stage: int) -> tuple[float, float]:
    """(parameters, trained parameters) on pipeline stage ``stage``."""
    if pp == 1:
        return w.stage_params(1)
    p = w.params
    layers = p.layers / pp
    trained = layers if w.body_trains else 0.0
    params = layers
    if stage == 0:
        params += p.first
        trained += p.first if w.body_trains else 0
    if stage == pp - 1:
        params += p.last
        trained += (p.last - p.projector if w.body_trains else 0) + (p.projector if w.projector_trains else 0)
    return params, trained


def stage_memory(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, dp: int, stage: int,
                 micro_samples: int, in_flight: int, recompute: bool | str) -> MemoryBreakdown:
    """Bytes on one rank of pipeline stage ``stage`` of a ``tp x cp x pp x dp`` grid of ``w``."""
    params, trained = _stage_params(w, pp, stage)
    shards = (dp * cp) if problem.assumptions.distributed_optimizer else 1
    state = trained / tp * problem.optimizer_bytes / shards
    return MemoryBreakdown(
        weights=params / tp * problem.act_bytes,
        gradients=trained / tp * problem.grad_bytes,
        optimizer=state,
        activations=activation_bytes(problem, w, tp, cp, pp, micro_samples, in_flight, recompute, stage),
    )


def in_flight(w: ModuleWork, pp: int, stage: int, micro_batches: int, llm_pp: int,
              heterogeneous: bool = False) -> int:
    """Micro-batches whose activations a stage keeps (``runtime/train/schedule.py``)."""
    if w.is_language:
        return min(pp - stage, micro_batches)
    if heterogeneous:
        return min(1 + llm_pp + ENCODER_RUN_AHEAD, micro_batches)
    if llm_pp == 1:
        return 1  # on the LLM's ranks, each micro-batch's backward comes before the next forward
    return min(1 + llm_pp, micro_batches)  # forwards first, up to the pipeline's depth


def module_memory(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, dp: int,
                  micro_samples: int, micro_batches: int, recompute: bool | str,
                  llm_pp: int = 1, heterogeneous: bool = False) -> MemoryBreakdown:
    """Bytes on the heaviest rank of a ``tp x cp x pp x dp`` grid of module ``w``."""
    stages = [stage_memory(problem, w, tp, cp, pp, dp, s, micro_samples,
                           in_flight(w, pp, s, micro_batches, llm_pp, heterogeneous), recompute)
              for s in range(pp)]
    return max(stages, key=lambda m: m.total)


def rank_memory(problem: Problem, layout, rank: int, micro_batch_size: int,
                recompute: dict[str, str] | None = None) -> MemoryBreakdown:
    """Bytes on global rank ``rank`` of a finalized layout: every module (and pipeline stage) the
    rank holds, with each module's recompute mode (``train.recompute``)."""
    lm = layout.language
    micro_batches = problem.global_batch // (micro_batch_size * lm.dp)
    parts = []
    for w in problem.modules:
        par = layout.module_parallelisms[w.name]
        coords = par.coordinates(rank)
        if coords is None:
            continue
        samples = micro_batch_size * lm.dp // par.dp
        flight = in_flight(w, par.pp, coords["pp"], micro_batches, lm.pp,
                           layout.deployment_mode == "heterogeneous")
        parts.append(stage_memory(problem, w, par.tp, par.cp, par.pp, par.dp, coords["pp"], samples, flight,
                                  (recompute or {}).get(w.name, "none")))
    return sum(parts, MemoryBreakdown(0.0, 0.0, 0.0, 0.0))
