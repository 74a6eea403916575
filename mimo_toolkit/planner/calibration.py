"""Calibration profiles: measured rates that replace the built-in assumptions.

A profile is a JSON file (format ``mimo-toolkit-calibration/1``)::

    {
      "format": "mimo-toolkit-calibration/1",
      "machine": {"device": "cpu", "description": "2 x Xeon 8480, gloo", "memory_gib": 16},
      "modules": {
        "llm":    {"flops_per_s": 2.1e10, "tp": 2},
        "vision": {"seconds_per_flop": 6.0e-11, "tp": 1}
      },
      "comm": {"intra_node_bytes_per_s": 2e9, "inter_node_bytes_per_s": 1e9, "latency_s": 5e-5},
      "step_overhead_s": 0.015,
      "provenance": {"recipe": "llava", "preset": "tiny", "toolkit_version": "0.1.0"}
    }

``modules`` maps a module kind (llm, vision, audio) to its achieved work FLOP/s per process
(forward + backward FLOPs as ``flops.py`` counts them, divided by the measured seconds), or
its inverse, measured at tensor-parallel size ``tp``. ``machine.device`` is ``cpu`` or a built-in
GPU whose figures the profile overrides. :func:`profile_from_timings` builds a profile from
timed steps of a known layout and :func:`compare_step_times` sets a prediction against
measured step times, so a calibration command only has to time steps (docs/planner.md).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ..config import JobConfig
from ..errors import UserError
from ..typed import from_plain, to_plain
from .candidate import evaluate_layout
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
    if profile.machine.device == "cpu" and profile.machine.memory_gib is None:
        raise UserError("profile.machine.memory_gib: required for a cpu profile (memory per process)")
    return profile


def machine_from_profile(profile: CalibrationProfile, source: str) -> Machine:
    """The machine a profile describes: a built-in GPU with measured figures, or a CPU."""
    rates = {
        kind: ModuleRate(r.flops_per_s if r.flops_per_s is not None else 1.0 / r.seconds_per_flop, r.tp)
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


def rates_from_timings(work_flops_per_rank: Mapping[str, float], seconds: Mapping[str, float],
                       kinds: Mapping[str, str], tps: Mapping[str, int]) -> dict[str, ProfileModule]:
    """Measured module rates: each module's work FLOPs per rank per step over the seconds its
    ranks spent in that module's forward and backward (timed without waiting on other modules).
    Keys are module names; the profile stores one rate per kind (the slowest if two modules
    share a kind)."""
    out: dict[str, ProfileModule] = {}
    for name, flops in work_flops_per_rank.items():
        if seconds.get(name, 0) <= 0:
            raise UserError(f"no measured time for module {name!r}")
        rate = flops / seconds[name]
        kind = kinds[name]
        if kind not in out or rate < (out[kind].flops_per_s or 0):
            out[kind] = ProfileModule(flops_per_s=rate, tp=tps[name])
    return out


def work_flops_per_rank(job: JobConfig) -> dict[str, float]:
    """Work FLOPs one rank of each module does per step under ``job``'s (validated) layout:
    its replica's samples through the heaviest pipeline stage, split over tp x cp."""
    out = {}
    for w in module_work(job):
        m = job.layout.module_parallelisms[w.name]
        samples = job.train.global_batch_size / m.dp
        shards = m.tensor_parallel * m.context_parallel
        out[w.name] = samples * w.stage_work_flops(m.pipeline_parallel, False) / shards
    return out


def profile_from_timings(job: JobConfig, device: str, module_seconds: Mapping[str, float],
                         step_seconds: Sequence[float], memory_gib: float | None = None,
                         description: str = "", warmup: int = 1) -> CalibrationProfile:
    """A profile from one timed run of ``job`` (validated; the layout it ran with).

    ``module_seconds``: per module, the seconds one of its ranks spent per step in that
    module's forward and backward (no waiting on other modules); ``step_seconds``: whole
    optimizer steps. Module rates are work FLOPs over those seconds; the fixed overhead is
    what the measured median step exceeds the step the new rates predict.
    """
    if device == "cpu" and memory_gib is None:
        raise UserError("a cpu profile needs the memory per process (memory_gib)")
    names = {w.name: w for w in module_work(job)}
    layout = job.layout.module_parallelisms
    modules = rates_from_timings(
        work_flops_per_rank(job), module_seconds,
        {n: w.kind for n, w in names.items()}, {n: layout[n].tensor_parallel for n in names},
    )
    profile = CalibrationProfile(
        machine=ProfileMachine(device=device, description=description, memory_gib=memory_gib),  # type: ignore[arg-type]
        modules=modules,
        provenance={"recipe": job.recipe, "preset": job.preset, "layout": job.layout.deployment_mode,
                    "config_hash": job.config_hash()},
    )
    machine = machine_from_profile(profile, "(being fitted)")
    problem = make_problem(job, machine, job.cluster.nodes or 1, job.cluster.procs_per_node)
    predicted = evaluate_layout(problem, job.layout, job.train.micro_batch_size).step_s
    measured = compare_step_times(predicted, step_seconds, warmup).measured_median_s
    profile.step_overhead_s = max(0.0, measured - predicted)
    return profile
