"""Memory per GPU of one module's shard: weights, gradients, optimizer states, activations.

Mixed precision (Megatron): 2-byte weights, 4-byte main gradients, 12 bytes of Adam state
(fp32 master weights and two moments) per trained parameter: 18 bytes, or 6 + 12/d with the
distributed optimizer sharding the states over the d = dp x cp ranks that reduce gradients.
Frozen parameters cost their weights only.

Activations stored per layer and token (Korthikanti et al. 2022, with flash attention, no
dropout, sequence parallelism dividing everything by tp) in units of the activation width:
layer-norm inputs 2h, QKV input h, Q h, K and V 2kv, attention output h, MLP input h, MLP
inner 2f (3f gated: gate, up and their product). A 4h GELU MLP gives 16h elements = 32
bytes, the 34 sbh of the paper less its dropout masks. 1F1B keeps ``min(pp, m)`` micro-batches
in flight on the first stage; full recomputation keeps only each layer's input plus one
layer's working set; a forward-only module keeps one layer's working set.
"""

from __future__ import annotations

from dataclasses import dataclass

from .workload import ModuleWork, Problem


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU."""

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


def activation_elements_per_token(w: ModuleWork) -> int:
    """Stored activation elements per token of one layer (before the tp split)."""
    mlp_inner = (3 if w.gated_mlp else 2) * w.ffn
    return 6 * w.hidden + 2 * w.kv + mlp_inner


def activation_bytes(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int,
                     micro_samples: int, micro_batches: int, recompute: bool) -> float:
    """Peak activation bytes on the heaviest (first) pipeline stage."""
    tokens = micro_samples * w.tokens / cp
    width = problem.act_bytes / tp
    one_layer = tokens * activation_elements_per_token(w) * width
    logits = micro_samples * w.tokens / cp * w.vocab / tp * 4  # fp32 logits for the loss
    if not w.needs_backward:
        return one_layer + logits
    in_flight = min(pp, micro_batches)
    per_layer = tokens * w.hidden * width if recompute else one_layer
    stored = in_flight * (w.layers / pp) * per_layer
    return stored + (one_layer if recompute else 0.0) + logits


def module_memory(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, dp: int,
                  micro_samples: int, micro_batches: int, recompute: bool) -> MemoryBreakdown:
    """Bytes per GPU of a ``tp x cp x pp x dp`` shard of module ``w``."""
    params, trainable = w.stage_params(pp)
    shards = (dp * cp) if problem.assumptions.distributed_optimizer else 1
    return MemoryBreakdown(
        weights=params / tp * problem.act_bytes,
        gradients=trainable / tp * problem.grad_bytes,
        optimizer=trainable / tp * problem.optimizer_bytes / shards,
        activations=activation_bytes(problem, w, tp, cp, pp, micro_samples, micro_batches, recompute),
    )
