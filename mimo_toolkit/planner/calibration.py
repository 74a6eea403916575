"""Calibration profiles: measured rates that replace the built-in assumptions.

A profile is a JSON file (format ``mimo-toolkit-calibration/1``)::

    {
      "format": "mimo-toolkit-calibration/1",
      "machine": {"device": "cpu", "description": "2 x Xeon 8480, gloo", "memory_gib": 16},
      "modules": {
        "llm":    {"flops_per_s": 2.1e10, "tp": 2, "seconds_per_micro_batch": 0.006},
        "vision": {"seconds_per_flop": 6.0e-11, "tp": 1}
      },
      "comm": {"intra_node_bytes_per_s": 2e9, "inter_node_bytes_per_s": 1e9, "latency_s": 5e-5},
      "step_overhead_s": 0.015,
      "provenance": {"recipe": "llava", "preset": "tiny", "toolkit_version": "0.1.0"}
    }

``modules`` maps a module kind (llm, vision, audio) to its achieved work FLOP/s per process
(forward + backward FLOPs as ``flops.py`` counts them, divided by the measured seconds), or
its inverse, measured at tensor-parallel size ``tp``, and optionally the fixed seconds one
micro-batch costs the module whatever its size (framework dispatch: large for toy models on a
CPU, negligible on GPUs). ``machine.device`` is ``cpu`` or a built-in
GPU whose figures the profile overrides. :func:`profile_from_timings` builds a profile from
timed steps of a known layout (:func:`split_micro_batch_cost` separates the fixed cost from
two runs at different micro-batch sizes) and :func:`compare_step_times` sets a prediction
against measured step times; ``measure.py`` runs the jobs (``mimo-toolkit calibrate``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ..config import JobConfig
from ..errors import UserError
from ..typed import from_plain, to_plain
from .candidate import evaluate_layout
from .cost import GridSize, encoder_bridge_s, module_comm_s, stage_share
from .hardware import GPUS, Machine, ModuleRate
from .workload import make_problem, module_work

FORMAT = "mimo-toolkit-calibration/1"

#: Figures a CPU profile may leave out (gloo over shared memory / 10 GbE); marked in the output.
CPU_DEFAULTS = {"intra_node_bytes_per_s": 2e9, "inter_node_bytes_per_s": 1e9, "latency_s": 5e-5,
                "memory_bytes_per_s": 2e10}


@dataclass(kw_only=True)
class ProfileMachine:
    """What the rates were measured on."""

    device: Literal["cpu", "h100", "h200", "a100"]
    """cpu, or a built-in GPU whose figures the profile overrides."""
    description: str = ""
    memory_gib: float | None = None
    """Memory per process (cpu: required) or per GPU (overrides the built-in figure)."""
    peak_flops_per_s: float | None = None
    """Peak per process/GPU, for MFU (cpu: optional)."""
    memory_bytes_per_s: float | None = None


@dataclass(kw_only=True)
class ProfileModule:
    """A measured rate of one module kind: one of the two fields."""

    flops_per_s: float | None = None
    seconds_per_flop: float | None = None
    tp: int = 1
    seconds_per_micro_batch: float = 0.0
    """Fixed seconds one micro-batch costs the whole module (forward + backward, one rank)."""


@dataclass(kw_only=True)
class ProfileComm:
    intra_node_bytes_per_s: float | None = None
    inter_node_bytes_per_s: float | None = None
    latency_s: float | None = None


@dataclass(kw_only=True)
class CalibrationProfile:
    """The whole profile file."""

    format: str = FORMAT
    machine: ProfileMachine
    modules: dict[str, ProfileModule] = field(default_factory=dict)
    comm: ProfileComm = field(default_factory=ProfileComm)
    step_overhead_s: float = 0.0
    provenance: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(to_plain(self), indent=2, sort_keys=True) + "\n"


def load_profile(path: str | Path) -> CalibrationProfile:
    """Read and check a profile file (errors are one-line UserErrors naming the field)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"--profile {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--profile {path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    profile = from_plain(CalibrationProfile, data, "profile")
    if profile.format != FORMAT:
        raise UserError(f"profile.format={profile.format!r}: expected {FORMAT!r}")
    for kind, rate in profile.modules.items():
        if (rate.flops_per_s is None) == (rate.seconds_per_flop is None):
            raise UserError(f"profile.modules.{kind}: give exactly one of flops_per_s, seconds_per_flop")
        if (rate.flops_per_s or 1.0) <= 0 or (rate.seconds_per_flop or 1.0) <= 0 or rate.tp < 1:
            raise UserError(f"profile.modules.{kind}: rates must be > 0 and tp >= 1")
        if rate.seconds_per_micro_batch < 0:
            raise UserError(f"profile.modules.{kind}.seconds_per_micro_batch: must be >= 0")
    if profile.machine.device == "cpu" and profile.machine.memory_gib is None:
        raise UserError("profile.machine.memory_gib: required for a cpu profile (memory per process)")
    return profile


def machine_from_profile(profile: CalibrationProfile, source: str) -> Machine:
    """The machine a profile describes: a built-in GPU with measured figures, or a CPU."""
    rates = {
        kind: ModuleRate(r.flops_per_s if r.flops_per_s is not None else 1.0 / r.seconds_per_flop, r.tp,
                         r.seconds_per_micro_batch)
        for kind, r in profile.modules.items()
    }
    m, c = profile.machine, profile.comm
    if m.device == "cpu":
        base = Machine(
            name="cpu", peak_flops=None, memory_gib=m.memory_gib or 0.0, efficiency=1.0,
            memory_bytes_per_s=CPU_DEFAULTS["memory_bytes_per_s"],
            intra_node_bytes_per_s=CPU_DEFAULTS["intra_node_bytes_per_s"],
            inter_node_bytes_per_s=CPU_DEFAULTS["inter_node_bytes_per_s"],
            latency_s=CPU_DEFAULTS["latency_s"], usable_memory_fraction=0.8,
        )
    else:
        base = GPUS[m.device]
    overrides = {
        "peak_flops": m.peak_flops_per_s, "memory_gib": m.memory_gib, "memory_bytes_per_s": m.memory_bytes_per_s,
        "intra_node_bytes_per_s": c.intra_node_bytes_per_s, "inter_node_bytes_per_s": c.inter_node_bytes_per_s,
        "latency_s": c.latency_s,
    }
    return replace(
        base,
        **{k: v for k, v in overrides.items() if v is not None},
        module_rates=rates,
        step_overhead_s=profile.step_overhead_s,
        source=f"calibration profile {source}",
    )


# ---- predicted vs measured ------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A predicted step time against measured ones."""

    predicted_s: float
    measured_median_s: float
    measured_min_s: float
    measured_max_s: float
    samples: int

    @property
    def ratio(self) -> float:
        """measured / predicted: > 1 means the model is optimistic."""
        return self.measured_median_s / self.predicted_s

    @property
    def error(self) -> float:
        """Relative error of the prediction against the measured median."""
        return (self.predicted_s - self.measured_median_s) / self.measured_median_s

    def summary(self) -> str:
        return (
            f"predicted {self.predicted_s:.4g} s/step, measured median {self.measured_median_s:.4g} s "
            f"(min {self.measured_min_s:.4g}, max {self.measured_max_s:.4g}, n={self.samples}): "
            f"error {self.error:+.1%}"
        )


def compare_step_times(predicted_s: float, measured_s: Sequence[float], warmup: int = 1) -> Comparison:
    """Set a predicted step time against measured ones, dropping ``warmup`` first steps
    (allocator warm-up, lazy initialisation)."""
    kept = list(measured_s)[warmup:]
    if not kept:
        raise UserError(f"need more than {warmup} measured step(s) to compare")
    if predicted_s <= 0 or min(kept) <= 0:
        raise UserError("step times must be > 0")
    return Comparison(predicted_s, statistics.median(kept), min(kept), max(kept), len(kept))


def allreduce_bus_bytes_per_s(nbytes: float, ranks: int, seconds: float) -> float:
    """Bus bandwidth of a timed all-reduce of ``nbytes`` over ``ranks`` (the inverse of the
    model's ring estimate), for the profile's ``comm`` figures."""
    if ranks < 2 or seconds <= 0:
        raise UserError("an all-reduce bandwidth needs >= 2 ranks and a time > 0")
    return 2.0 * (ranks - 1) / ranks * nbytes / seconds


def comm_from_allreduces(ranks: int, timings: Sequence[tuple[float, float]]) -> ProfileComm:
    """Inside-node bus bandwidth and per-hop latency from mean all-reduce times at two or more
    sizes (``commbench.py``): the inverse of the model's ``allreduce_s`` through the smallest
    and the largest message."""
    if ranks < 2 or len(timings) < 2:
        raise UserError("the collective figures need all-reduces over >= 2 ranks at >= 2 sizes")
    (small, t_small), (large, t_large) = min(timings), max(timings)
    ring = 2.0 * (ranks - 1) / ranks
    if t_large > t_small:
        bandwidth = ring * (large - small) / (t_large - t_small)
    else:  # noise: the large message was no slower; bound the bandwidth by it alone
        bandwidth = allreduce_bus_bytes_per_s(large, ranks, t_large)
    hops = math.ceil(math.log2(ranks))
    latency = max(0.0, t_small - ring * small / bandwidth) / (2 * hops)
    return ProfileComm(intra_node_bytes_per_s=bandwidth, latency_s=latency)


def rates_from_timings(work_flops_per_rank: Mapping[str, float], seconds: Mapping[str, float],
                       kinds: Mapping[str, str], tps: Mapping[str, int],
                       fixed: Mapping[str, tuple[float, float]] | None = None) -> dict[str, ProfileModule]:
    """Measured module rates: each module's work FLOPs per rank per step over the seconds its
    ranks spent in that module's forward and backward (timed without waiting on other modules).
    ``fixed``: per module, (seconds per micro-batch, micro-batches x stage share per step) of
    its fixed cost, taken off the seconds first. Keys are module names; the profile stores one
    rate per kind (the slowest if two modules share a kind)."""
    out: dict[str, ProfileModule] = {}
    for name, flops in work_flops_per_rank.items():
        if seconds.get(name, 0) <= 0:
            raise UserError(f"no measured time for module {name!r}")
        per_micro, count = (fixed or {}).get(name, (0.0, 0.0))
        # A fixed cost fitted on noisy runs may leave almost nothing: keep the rate finite.
        rate = flops / max(seconds[name] - per_micro * count, 0.01 * seconds[name])
        kind = kinds[name]
        if kind not in out or rate < (out[kind].flops_per_s or 0):
            out[kind] = ProfileModule(flops_per_s=rate, tp=tps[name], seconds_per_micro_batch=per_micro)
    return out


def split_micro_batch_cost(runs: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """(seconds per micro-batch, seconds per FLOP) of one module from runs of
    (micro-batches x stage share, work FLOPs, compute seconds) per step: a least-squares fit of
    ``seconds = count x fixed + flops x per_flop`` with both terms >= 0. Two runs of one
    layout at different micro-batch sizes (same samples, different counts) determine it."""
    if not runs:
        raise UserError("no timed runs to fit")
    candidates = []
    if len({(n, f) for n, f, _ in runs}) >= 2:
        sxx = sum(n * n for n, _, _ in runs)
        syy = sum(f * f for _, f, _ in runs)
        sxy = sum(n * f for n, f, _ in runs)
        bx = sum(n * t for n, _, t in runs)
        by = sum(f * t for _, f, t in runs)
        det = sxx * syy - sxy * sxy
        if det > 0:
            candidates.append(((bx * syy - by * sxy) / det, (by * sxx - bx * sxy) / det))
    candidates.append((0.0, sum(f * t for _, f, t in runs) / sum(f * f for _, f, _ in runs)))
    candidates.append((sum(n * t for n, _, t in runs) / sum(n * n for n, _, _ in runs), 0.0))

    def residual(c: tuple[float, float]) -> float:
        return sum((n * c[0] + f * c[1] - t) ** 2 for n, f, t in runs)

    return min((c for c in candidates if c[0] >= 0 and c[1] >= 0), key=residual)


def work_flops_per_rank(job: JobConfig) -> dict[str, float]:
    """Work FLOPs one rank of each module does per step under ``job``'s (validated) layout:
    its replica's samples through the heaviest pipeline stage, split over tp x cp."""
    out = {}
    for w in module_work(job):
        m = job.layout.module_parallelisms[w.name]
        samples = job.train.global_batch_size / m.dp
        shards = m.tp * m.cp
        out[w.name] = samples * w.stage_work_flops(m.pp, False) / shards
    return out


def micro_batch_counts(job: JobConfig) -> dict[str, float]:
    """Per module, how many times per step one rank pays the module's fixed per-micro-batch
    cost: every global micro-batch, times its heaviest stage's share of the module."""
    micro_batches = job.train.global_batch_size // (job.train.micro_batch_size * job.layout.language.dp)
    return {w.name: micro_batches * stage_share(w, job.layout.module_parallelisms[w.name].pp)
            for w in module_work(job)}


def communication_in_timings(job: JobConfig, machine: Machine) -> dict[str, float]:
    """Per module, the seconds per step of communication the runtime's forward/backward timers
    include: TP collectives of every micro-batch and a colocated encoder's forward all-to-all.
    Point-to-point transfers (pipeline, heterogeneous bridge) and the colocated bridge's
    gradient all-to-all bring an operation its inputs and are booked as its wait
    (``runtime/train/clock.py``), so they are not taken off. Taken off measured module times
    so that the fitted rates are compute only, whatever layout was timed."""
    problem = make_problem(job, machine, job.cluster.nodes or 1, job.cluster.procs_per_node)
    layout, mode = job.layout, job.layout.deployment_mode
    micro_batches = job.train.global_batch_size // (job.train.micro_batch_size * layout.language.dp)
    grids = {n: GridSize(m.tp, m.cp, m.dp) for n, m in layout.module_parallelisms.items()}
    out = {}
    for w in problem.modules:
        m = layout.module_parallelisms[w.name]
        samples = job.train.micro_batch_size * layout.language.dp // m.dp
        comm = module_comm_s(problem, w, m.tp, m.cp, m.pp, m.dp, samples, False, math.inf, pipeline_sends=False)
        out[w.name] = micro_batches * comm
        if not w.is_language and mode != "heterogeneous":
            out[w.name] += encoder_bridge_s(problem, mode, w, grids[w.name], grids[problem.language], micro_batches,
                                            gradient=False)
    return out


def profile_from_timings(job: JobConfig, device: str, module_seconds: Mapping[str, float],
                         step_seconds: Sequence[float], memory_gib: float | None = None,
                         description: str = "", warmup: int = 1, *,
                         micro_batch_seconds: Mapping[str, float] | None = None,
                         comm: ProfileComm | None = None,
                         provenance: Mapping[str, str] | None = None) -> CalibrationProfile:
    """A profile from one timed run of ``job`` (validated; the layout it ran with).

    ``module_seconds``: per module, the seconds one of its ranks spent per step computing that
    module's forward and backward (no communication, no waiting on other modules);
    ``step_seconds``: whole optimizer steps. ``micro_batch_seconds``: per module, its fixed
    cost per micro-batch (:func:`split_micro_batch_cost`), taken off before the rates are
    computed; ``comm``: measured collective figures. Module rates are work FLOPs over the
    remaining seconds; the fixed overhead is what the measured median step exceeds the step
    the new figures predict.
    """
    if device == "cpu" and memory_gib is None:
        raise UserError("a cpu profile needs the memory per process (memory_gib)")
    names = {w.name: w for w in module_work(job)}
    layout = job.layout.module_parallelisms
    counts = micro_batch_counts(job)
    fixed = {n: ((micro_batch_seconds or {}).get(n, 0.0), counts[n]) for n in names}
    modules = rates_from_timings(
        work_flops_per_rank(job), module_seconds,
        {n: w.kind for n, w in names.items()}, {n: layout[n].tp for n in names}, fixed,
    )
    profile = CalibrationProfile(
        machine=ProfileMachine(device=device, description=description, memory_gib=memory_gib),  # type: ignore[arg-type]
        modules=modules,
        comm=comm or ProfileComm(),
        provenance={"recipe": job.recipe, "preset": job.preset, "layout": job.layout.deployment_mode,
                    "config_hash": job.config_hash(), **(provenance or {})},
    )
    machine = machine_from_profile(profile, "(being fitted)")
    problem = make_problem(job, machine, job.cluster.nodes or 1, job.cluster.procs_per_node)
    predicted = evaluate_layout(problem, job.layout, job.train.micro_batch_size, job.train.recompute).step_s
    measured = compare_step_times(predicted, step_seconds, warmup).measured_median_s
    profile.step_overhead_s = max(0.0, measured - predicted)
    return profile
