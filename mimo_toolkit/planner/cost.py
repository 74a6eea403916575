"""Step time of a layout: per-module compute and communication, combined by deployment mode.

Per module (its ranks, one micro-batch on one pipeline stage):
  compute = b x (work FLOPs of the heaviest stage [+ a forward if recomputing]) / (tp cp) / FLOP/s
            + the stage's share of a measured fixed cost per micro-batch (profiles; 0 otherwise)
  TP      = 2 all-reduces (reduce-scatter + all-gather with sequence parallelism) per layer per
            pass of b s h bytes over tp ranks (forward, backward, recompute forward); the LLM
            adds its embedding, LM-head gradient and cross-entropy all-reduces, an encoder its
            projector's
  CP      = (cp-1) ring steps of K and V per layer, exposed only beyond the attention they hide behind
  PP      = one send of b s h / tp bytes per pass to the next stage
Over a step of m micro-batches a module is busy (m + p - 1) x that (bubble (p-1)/(m+p-1)), then
reduces gradients over its dp x cp ranks (reduce-scatter + all-gather with the distributed
optimizer; none for frozen modules) and steps its optimizer (memory bound).

Modes:
  homogeneous / colocated: the modules run one after another on all ranks; the step is the sum
  of their times plus the encoder-to-LLM collectives and every gradient sync.
  heterogeneous: encoders, the bridge transfer and the LLM form a pipeline over micro-batches;
  the step is the busiest stage plus one micro-batch of every other stage (fill and drain),
  then the slowest gradient sync.
Every step adds a few small all-reduces over all ranks and the profile's fixed overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .hardware import allgather_s, allreduce_s
from .memory import MemoryBreakdown, module_memory
from .workload import ModuleWork, Problem

MODES = ("homogeneous", "colocated", "heterogeneous")
#: Small all-reduces the runtime makes every step: the global batch's loss-token count, the
#: step consensus (loss, gradient norms, stop flag) and the slowest rank's module times.
STEP_COLLECTIVES = 3
#: The cross-entropy's all-reduces over vocabulary-parallel logits (a max, then two sums).
LOSS_COLLECTIVES = 2


@dataclass(frozen=True)
class ModuleEstimate:
    """One module shard's share of a step."""

    busy_s: float
    """Time its ranks work per step, pipeline bubble included."""
    fill_s: float
    """One micro-batch through all its stages (its part of a heterogeneous pipeline's fill/drain)."""
    sync_s: float
    """Exposed gradient reduction plus the optimizer step."""
    compute_s: float
    """Compute part of ``busy_s`` (the rest is communication and bubble)."""
    bubble: float
    memory: MemoryBreakdown


def bubble_fraction(pp: int, micro_batches: int) -> float:
    """Idle fraction of a 1F1B pipeline: (p - 1) / (m + p - 1)."""
    return (pp - 1) / (micro_batches + pp - 1)


def stage_share(w: ModuleWork, pp: int) -> float:
    """The heaviest pipeline stage's part of the module's work (of its fixed per-micro-batch cost)."""
    return w.stage_work_flops(pp, False) / w.stage_work_flops(1, False)


def estimate_module(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, dp: int,
                    micro_samples: int, micro_batches: int, recompute: bool, llm_pp: int = 1,
                    heterogeneous: bool = False) -> ModuleEstimate:
    """Time and memory of module ``w`` on a ``tp x cp x pp x dp`` grid.

    ``micro_samples`` is the samples one replica takes per global micro-batch
    (``mbs x llm.dp / dp``), ``micro_batches`` the global micro-batches per step; ``llm_pp``
    and ``heterogeneous`` (an encoder on ranks of its own) set how far encoders run ahead
    (their micro-batches in flight).
    """
    mach = problem.machine
    recompute = recompute and w.needs_backward
    tokens = micro_samples * w.tokens / cp  # per rank
    rate = mach.rate(w.kind, w.hidden, tp, tokens, problem.precision)
    compute = micro_samples * w.stage_work_flops(pp, recompute) / (tp * cp) / rate
    compute += mach.micro_batch_s(w.kind) * stage_share(w, pp)
    per_micro = compute + module_comm_s(problem, w, tp, cp, pp, dp, micro_samples, recompute, rate)
    sync = gradient_sync_s(problem, w, tp, cp, pp, dp, per_micro) if w.trains else 0.0
    return ModuleEstimate(
        busy_s=(micro_batches + pp - 1) * per_micro,
        fill_s=pp * per_micro,
        sync_s=sync,
        compute_s=micro_batches * compute,
        bubble=bubble_fraction(pp, micro_batches),
        memory=module_memory(problem, w, tp, cp, pp, dp, micro_samples, micro_batches, recompute, llm_pp,
                             heterogeneous),
    )


def module_comm_s(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, dp: int, micro_samples: int,
                  recompute: bool, rate: float, pipeline_sends: bool = True) -> float:
    """Communication inside one micro-batch of a module shard on its heaviest stage: TP
    collectives, CP ring steps beyond the attention they hide behind, PP sends (unless not
    ``pipeline_sends``)."""
    mach, gpn = problem.machine, problem.gpus_per_node
    tokens = micro_samples * w.tokens / cp
    forward_passes = 2 if recompute else 1
    backward_passes = 1 if w.needs_backward else 0
    layers = w.layers / pp
    lat = mach.latency_s
    comm = 0.0
    if tp > 1:
        msg = tokens * w.hidden * problem.act_bytes
        collectives = layers * 2 * (forward_passes + backward_passes)
        if w.is_language:  # embedding (first stage, forward), LM head input gradient (last, backward)
            collectives += (1 if pp == 1 else 0) + backward_passes
            comm += LOSS_COLLECTIVES * allreduce_s(2 * tokens * 4, tp, mach.bandwidth(False), lat)
        else:  # the projector MLP: its output (forward), its input gradient (when the body trains)
            collectives += 1 + backward_passes
        comm += collectives * allreduce_s(msg, tp, mach.bandwidth(False), lat)
    if cp > 1:
        kv = 2 * tokens * w.kv * problem.act_bytes / tp
        ring = (cp - 1) * (kv / mach.bandwidth(tp * cp > gpn) + lat)
        attention = micro_samples * w.flops.attention / w.layers / (tp * cp) / rate
        exposed = forward_passes * max(0.0, ring - attention) + backward_passes * max(0.0, 2 * ring - 2 * attention)
        comm += layers * exposed
    if pp > 1 and pipeline_sends:
        msg = tokens * w.hidden * problem.act_bytes / tp
        comm += (forward_passes + backward_passes) * (msg / mach.bandwidth(tp * cp * dp * pp > gpn) + lat)
    return comm


def gradient_sync_s(problem: Problem, w: ModuleWork, tp: int, cp: int, pp: int, dp: int, per_micro: float) -> float:
    """Exposed gradient reduction over dp x cp ranks plus the optimizer step of one shard."""
    mach = problem.machine
    _, trainable = w.stage_params(pp)
    shard = trainable / tp
    n = dp * cp
    bw = mach.bandwidth(tp * cp * dp > problem.gpus_per_node)
    distributed = problem.assumptions.distributed_optimizer
    if distributed:  # reduce-scatter gradients, all-gather updated weights
        reduce = allgather_s(shard * problem.grad_bytes, n, bw, mach.latency_s)
        reduce += allgather_s(shard * problem.act_bytes, n, bw, mach.latency_s)
    else:
        reduce = allreduce_s(shard * problem.grad_bytes, n, bw, mach.latency_s)
    if problem.assumptions.overlap_grad_reduce:  # hidden behind the last micro-batch's backward
        reduce = max(0.0, reduce - per_micro * 2 / 3)
    owned = shard / n if distributed else shard
    touched = problem.grad_bytes + 2 * problem.optimizer_bytes + problem.act_bytes  # read/write states
    return reduce + owned * touched / mach.memory_bytes_per_s


@dataclass(frozen=True)
class GridSize:
    """The sizes the bridge estimate needs of one module."""

    tp: int
    cp: int
    dp: int


def bridge_s(problem: Problem, mode: str, sizes: Sequence[GridSize], micro_batches: int) -> float:
    """Encoder-to-LLM embedding transfer per step (and its gradient back where encoders train),
    as the runtime's bridges do it; 0 (a lower bound) while the grids are not chosen.

    heterogeneous: point-to-point messages between disjoint rank sets, a pipeline stage of its
    own (the slowest encoder's). colocated and homogeneous: collectives every rank waits for.
    """
    if not problem.encoders or not sizes:
        return 0.0
    times = [encoder_bridge_s(problem, mode, w, s, sizes[-1], micro_batches) for w, s in zip(problem.encoders, sizes)]
    return max(times) if mode == "heterogeneous" else sum(times)


def encoder_bridge_s(problem: Problem, mode: str, w: ModuleWork, enc: GridSize, lm: GridSize,
                     micro_batches: int, gradient: bool = True) -> float:
    """One encoder's bridge per step (the gradient's way back only with ``gradient``).

    heterogeneous: as many links as the smaller side has ranks, one message per micro-batch,
    direction and fan-in/fan-out chunk. colocated and homogeneous: per micro-batch, an
    all-to-all over the encoder's dp group that gives every first-stage LLM rank its
    replica's embeddings, and for a trained encoder one over all its ranks that brings each
    encoder replica its samples' gradients from their one holder per LLM replica.
    """
    mach = problem.machine
    bandwidth, lat = mach.bandwidth(problem.world > problem.gpus_per_node), mach.latency_s
    step_bytes = problem.global_batch * w.out_tokens * problem.llm.hidden
    trains = w.trains and gradient
    if mode == "heterogeneous":
        links, directions = min(enc.tp * enc.dp, lm.tp * lm.cp * lm.dp), (2 if trains else 1)
        fan = max(enc.dp, lm.dp) // min(enc.dp, lm.dp)
        volume = step_bytes * problem.act_bytes * directions
        return volume / (links * bandwidth) + micro_batches * directions * fan * lat
    micro = step_bytes / micro_batches * problem.act_bytes
    per_micro = alltoall_s(micro / enc.dp * lm.tp * lm.cp, micro / lm.dp, enc.dp, bandwidth, lat)
    if trains:
        per_micro += alltoall_s(micro / lm.dp * enc.tp * enc.cp, micro / enc.dp, enc.tp * enc.cp * enc.dp, bandwidth, lat)
    return micro_batches * per_micro


def alltoall_s(send_bytes: float, recv_bytes: float, n: int, bandwidth: float, latency: float) -> float:
    """An all-to-all over ``n`` ranks where the busiest rank sends and receives these bytes."""
    if n <= 1:
        return 0.0
    return max(send_bytes, recv_bytes) / bandwidth + (n - 1) * latency


def step_collectives_s(problem: Problem) -> float:
    """The small all-reduces every step makes over all ranks (see ``STEP_COLLECTIVES``)."""
    mach = problem.machine
    return STEP_COLLECTIVES * allreduce_s(64, problem.world, mach.bandwidth(problem.world > problem.gpus_per_node),
                                          mach.latency_s)


def step_s(problem: Problem, mode: str, estimates: Sequence[ModuleEstimate], bridge: float,
           micro_batches: int) -> float:
    """Predicted seconds per optimizer step; ``estimates`` are encoders first, the LLM last."""
    overhead = problem.machine.step_overhead_s + step_collectives_s(problem)
    if mode != "heterogeneous":
        return sum(e.busy_s + e.sync_s for e in estimates) + bridge + overhead
    encoders, llm = estimates[:-1], estimates[-1]
    stages = [(llm.busy_s, llm.fill_s)]
    if encoders:
        stages.append((max(e.busy_s for e in encoders), max(e.fill_s for e in encoders)))
        stages.append((bridge, bridge / micro_batches))
    slowest = max(range(len(stages)), key=lambda i: stages[i][0])
    fill = sum(f for i, (_, f) in enumerate(stages) if i != slowest)
    return stages[slowest][0] + fill + max(e.sync_s for e in estimates) + overhead
