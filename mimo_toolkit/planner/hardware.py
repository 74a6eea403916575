"""The machine a plan is for: compute rates, memory, bandwidths, and collective times.

Built-in GPU figures are published peaks (dense BF16: H100 SXM and H200 989 TFLOP/s, A100
312 TFLOP/s) times an efficiency that large transformer layers reach (``efficiency``) and two
shape factors: GEMMs slow down when tensor parallelism leaves a narrow hidden shard, and when
a micro-batch carries few tokens. These efficiencies are assumptions until a calibration
profile replaces them with measured rates (``calibration.py``); a CPU machine exists only
through such a profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import UserError

GIB = float(1 << 30)

#: Hidden width per TP shard at which GEMMs run at half their large-shape efficiency.
HIDDEN_KNEE = 256.0
#: Tokens per micro-batch per rank at which GEMMs run at half their large-shape efficiency.
TOKEN_KNEE = 128.0


@dataclass(frozen=True)
class ModuleRate:
    """A measured rate: work FLOPs per second per process for one module kind."""

    flops_per_s: float
    tp: int = 1
    """Tensor-parallel size it was measured at (other sizes are scaled by the shard factor)."""
    seconds_per_micro_batch: float = 0.0
    """Fixed time one micro-batch costs the whole module (forward + backward, every layer, one
    rank) whatever its size: framework dispatch, which dominates toy models on a CPU and is
    negligible on GPUs. A pipeline stage pays its share of the module's work of it."""


@dataclass(frozen=True)
class Machine:
    """One kind of accelerator (or CPU process) and the network between them."""

    name: str
    peak_flops: float | None
    """Dense BF16 peak per device (FLOP/s); None where unknown (no MFU is reported)."""
    memory_gib: float
    """Memory per device (per process on CPU)."""
    efficiency: float
    """Fraction of peak that wide, token-rich transformer layers reach (before shape factors)."""
    memory_bytes_per_s: float
    """Device memory bandwidth (the optimizer step is bound by it)."""
    intra_node_bytes_per_s: float
    """All-reduce bus bandwidth inside a node (NVLink; shared memory/gloo on CPU)."""
    inter_node_bytes_per_s: float
    """Network bandwidth per device between nodes."""
    latency_s: float
    """Per-hop latency of a collective."""
    usable_memory_fraction: float = 0.9
    """Memory left after the CUDA context, NCCL buffers and allocator fragmentation."""
    module_rates: dict[str, ModuleRate] = field(default_factory=dict)
    """Measured rates by module kind (llm, vision, audio); they replace peak x efficiency."""
    step_overhead_s: float = 0.0
    """Fixed time per step not in the model (data loading, logging, launch gaps)."""
    source: str = "built-in published figures"

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * GIB * self.usable_memory_fraction

    def peak(self, precision: str) -> float | None:
        """Peak for the run's precision: fp32 runs on TF32 tensor cores at half the BF16 rate."""
        if self.peak_flops is None:
            return None
        return self.peak_flops / 2 if precision == "fp32" else self.peak_flops

    def rate(self, kind: str, hidden: int, tp: int, tokens: float, precision: str) -> float:
        """Achieved FLOP/s of one device running a ``kind`` module shard."""
        measured = self.module_rates.get(kind)
        if measured is not None:
            return measured.flops_per_s * shard_factor(hidden, tp) / shard_factor(hidden, measured.tp)
        peak = self.peak(precision)
        if peak is None:
            raise UserError(f"machine {self.name!r} has no measured rate for {kind} modules; add it to the profile")
        return peak * self.efficiency * shard_factor(hidden, tp) * token_factor(tokens)

    def micro_batch_s(self, kind: str) -> float:
        """Measured fixed seconds per micro-batch of a ``kind`` module (0 without a profile)."""
        measured = self.module_rates.get(kind)
        return measured.seconds_per_micro_batch if measured is not None else 0.0

    def max_rate(self, kind: str, hidden: int, precision: str) -> float:
        """An upper bound of :meth:`rate` over tp and tokens (the search's lower bounds on time)."""
        measured = self.module_rates.get(kind)
        if measured is not None:
            return measured.flops_per_s / shard_factor(hidden, measured.tp)
        return self.rate(kind, hidden, 1, math.inf, precision) / shard_factor(hidden, 1)

    def bandwidth(self, crosses_nodes: bool) -> float:
        return self.inter_node_bytes_per_s if crosses_nodes else self.intra_node_bytes_per_s


def shard_factor(hidden: int, tp: int) -> float:
    """GEMM efficiency left when TP splits ``hidden`` into ``tp`` shards (1 for wide shards)."""
    width = hidden / tp
    return width / (width + HIDDEN_KNEE)


def token_factor(tokens: float) -> float:
    """GEMM efficiency left with few tokens per micro-batch on a rank."""
    return tokens / (tokens + TOKEN_KNEE)


# ---- collectives (ring/tree estimates: bandwidth term + latency term) ------------------


def _hops(n: int) -> int:
    return math.ceil(math.log2(n))


def allreduce_s(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """All-reduce of ``nbytes`` over ``n`` ranks: ring volume 2(n-1)/n, tree latency."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes / bandwidth + 2 * _hops(n) * latency


def allgather_s(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """All-gather (or reduce-scatter) of a ``nbytes`` buffer over ``n`` ranks."""
    if n <= 1:
        return 0.0
    return (n - 1) / n * nbytes / bandwidth + _hops(n) * latency


# ---- built-in GPUs --------------------------------------------------------------------

#: Memory as nvidia-smi reports it; bandwidths are achievable NCCL bus bandwidths
#: (NVLink 4: 450 GB/s per direction nominal; 8 x 400 Gb/s NDR per node: 50 GB/s per GPU).
GPUS: dict[str, Machine] = {
    "h100": Machine(
        name="h100", peak_flops=989e12, memory_gib=79.6, efficiency=0.55, memory_bytes_per_s=3.35e12,
        intra_node_bytes_per_s=360e9, inter_node_bytes_per_s=45e9, latency_s=15e-6,
    ),
    "h200": Machine(
        name="h200", peak_flops=989e12, memory_gib=140.4, efficiency=0.57, memory_bytes_per_s=4.8e12,
        intra_node_bytes_per_s=360e9, inter_node_bytes_per_s=45e9, latency_s=15e-6,
    ),
    # A100-SXM4-80GB: NVLink 3 (300 GB/s per direction), 8 x 200 Gb/s HDR per node.
    "a100": Machine(
        name="a100", peak_flops=312e12, memory_gib=80.0, efficiency=0.58, memory_bytes_per_s=2.04e12,
        intra_node_bytes_per_s=230e9, inter_node_bytes_per_s=22e9, latency_s=15e-6,
    ),
}

MACHINE_KINDS = (*GPUS, "cpu")


def builtin_machine(kind: str) -> Machine:
    """A built-in GPU; ``cpu`` has no built-in figures (it needs a calibration profile)."""
    if kind == "cpu":
        raise UserError("--gpu cpu needs --profile FILE (measured rates; see docs/planner.md)")
    if kind not in GPUS:
        raise UserError(f"--gpu {kind}: unknown; choose one of {', '.join(MACHINE_KINDS)}")
    return replace(GPUS[kind])
