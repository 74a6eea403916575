"""The machine a plan is for: compute rates, memory, bandwidths, and collective times.

Built-in GPU figures are published peaks (``costs.devices``, the table the runtime's MFU
uses: dense BF16 H100 SXM and H200 989 TFLOP/s, A100 312 TFLOP/s) times an efficiency that
large transformer layers reach (``efficiency``) and two shape factors: GEMMs slow down when tensor parallelism leaves a narrow hidden shard, and when
a micro-batch carries few tokens. These efficiencies are assumptions until a calibration
profile replaces them with measured rates (``calibration.py``); a CPU machine exists only
through such a profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..costs.devices import Device, device
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
    fp32_peak_flops: float | None = None
    """FP32 peak per device without TF32 (the runtime leaves TF32 off); None: unknown."""

    @property
    def usable_bytes(self) -> float:
        return self.memory_gib * GIB * self.usable_memory_fraction

    def peak(self, precision: str) -> float | None:
        """Peak for the run's precision: fp32 runs without TF32, on the FP32 units (as the
        runtime runs it, and as its MFU counts it)."""
        return self.fp32_peak_flops if precision == "fp32" else self.peak_flops

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

def gpu_machine(dev: Device, efficiency: float, intra_node: float, inter_node: float) -> Machine:
    """A built-in machine: the device's published figures plus the planner's assumptions."""
    return Machine(
        name=dev.name, peak_flops=dev.bf16_flops, fp32_peak_flops=dev.fp32_flops, memory_gib=dev.memory_gib,
        efficiency=efficiency, memory_bytes_per_s=dev.memory_bytes_per_s, intra_node_bytes_per_s=intra_node,
        inter_node_bytes_per_s=inter_node, latency_s=15e-6,
    )


#: ``--gpu`` kinds. Bandwidths are achievable NCCL bus bandwidths: NVLink 4 (450 GB/s per
#: direction nominal) and 8 x 400 Gb/s NDR per node (50 GB/s per GPU) for Hopper; NVLink 3
#: (300 GB/s) and 8 x 200 Gb/s HDR for the A100.
GPUS: dict[str, Machine] = {
    "h100": gpu_machine(device("H100 SXM"), 0.55, 360e9, 45e9),
    "h200": gpu_machine(device("H200 SXM"), 0.57, 360e9, 45e9),
    "a100": gpu_machine(device("A100 SXM 80GB"), 0.58, 230e9, 22e9),
}

MACHINE_KINDS = (*GPUS, "cpu")


def builtin_machine(kind: str) -> Machine:
    """A built-in GPU; ``cpu`` has no built-in figures (it needs a calibration profile)."""
    if kind == "cpu":
        raise UserError("--gpu cpu needs --profile FILE (measured rates; see docs/planner.md)")
    if kind not in GPUS:
        raise UserError(f"--gpu {kind}: unknown; choose one of {', '.join(MACHINE_KINDS)}")
    return replace(GPUS[kind])
