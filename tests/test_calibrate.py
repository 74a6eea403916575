"""Calibration: fitting a profile from timed runs, predicting with it, and the real command.

The fitting tests build the timings a run WOULD report under a known profile (the cost
model's own compute + communication for the layout) and check that fitting them gives the
profile back and the same predictions for other layouts. One test runs the real command.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mimo_toolkit.cli import cli
from mimo_toolkit.errors import UserError
from mimo_toolkit.planner import measure
from mimo_toolkit.planner.calibration import (
    CalibrationProfile,
    comm_from_allreduces,
    communication_in_timings,
    load_profile,
    machine_from_profile,
    micro_batch_counts,
    split_micro_batch_cost,
    work_flops_per_rank,
)
from mimo_toolkit.planner.candidate import evaluate_layout
from mimo_toolkit.planner.hardware import allreduce_s
from mimo_toolkit.planner.measure import TimedRun, fit_profile, quiet_run
from mimo_toolkit.planner.workload import make_problem
from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.typed import from_plain

ONE_PROCESS = ["layout.mode=homogeneous", "layout.llm.tp=1", "cluster.procs_per_node=1"]
HETERO = ["cluster.procs_per_node=2", "layout.mode=heterogeneous", "layout.vision.dp=1", "layout.vision.rank_offset=0",
          "layout.llm.tp=1", "layout.llm.dp=1", "layout.llm.rank_offset=1"]

TRUTH = from_plain(CalibrationProfile, {
    "machine": {"device": "cpu", "memory_gib": 8},
    "modules": {"vision": {"flops_per_s": 2e10, "seconds_per_micro_batch": 0.006},
                "llm": {"flops_per_s": 7e10, "seconds_per_micro_batch": 0.008}},
    "comm": {"intra_node_bytes_per_s": 1e9, "latency_s": 5e-4},
    "step_overhead_s": 0.007,
}, "profile")


def _job(sets, mbs=None):
    extra = [f"train.micro_batch_size={mbs}"] if mbs else []
    resolved = resolve_job("llava", "tiny", sets=[*sets, *extra])
    return resolved.config, resolved.world_size


def _predict(profile, sets, mbs=None) -> float:
    job, world = _job(sets, mbs)
    problem = make_problem(job, machine_from_profile(profile, "test"), 1, world)
    return evaluate_layout(problem, job.layout, job.train.micro_batch_size, job.train.recompute).step_s


def _timed_run(sets, mbs) -> TimedRun:
    """What the runtime would report for ``sets`` if the machine were exactly TRUTH."""
    job, _ = _job(sets, mbs)
    machine = machine_from_profile(TRUTH, "truth")
    comm = communication_in_timings(job, machine)
    counts, flops = micro_batch_counts(job), work_flops_per_rank(job)
    times = {}
    for name in job.layout.module_parallelisms:
        kind, tp = job.model[name].KIND, job.layout.module_parallelisms[name].tp
        flops_per_s = machine.rate(kind, job.model[name].hidden_size, tp, 1.0, "fp32")
        times[f"{name}/fwd"] = comm[name] + counts[name] * machine.micro_batch_s(kind) + flops[name] / flops_per_s
        times[f"{name}/bwd"] = 0.0
    step = _predict(TRUTH, sets, mbs)
    rows = [{"step": i + 1, "step_time_s": step * (3 if i == 0 else 1), "module_time_s": times} for i in range(6)]
    return TimedRun(job, rows, foreign_load=0.0, wall_s=1.0)


@pytest.mark.parametrize("sets, other", [(ONE_PROCESS, 1), ([], 4)], ids=["one-process", "colocated-tp2"])
def test_fit_recovers_the_profile_and_its_predictions(sets, other):
    """Two micro-batch sizes of one layout give back rates, fixed costs and overhead, whether
    or not the timed layout communicates (tp2: its collectives are taken off first)."""
    comm = TRUTH.comm
    fitted = fit_profile([[_timed_run(sets, 2)], [_timed_run(sets, other)]], comm, {"threads_per_process": "1"})
    for kind in ("vision", "llm"):
        assert fitted.modules[kind].seconds_per_micro_batch == pytest.approx(
            TRUTH.modules[kind].seconds_per_micro_batch, rel=1e-6)
    assert fitted.step_overhead_s == pytest.approx(TRUTH.step_overhead_s, rel=1e-6)
    for other in (ONE_PROCESS, [], HETERO, ["layout.mode=homogeneous", "layout.llm.tp=2", "layout.vision.tp=2"]):
        assert _predict(fitted, other) == pytest.approx(_predict(TRUTH, other), rel=1e-6)
    assert load_profile_text(fitted.to_json()).modules == fitted.modules


def load_profile_text(text):
    return from_plain(CalibrationProfile, json.loads(text), "profile")


def test_fixed_cost_split():
    # 4 and 8 micro-batches of the same samples: 10 ms + 2 ms per micro-batch, and 14 ms + 1 ms.
    assert split_micro_batch_cost([(4, 1e9, 0.018), (8, 1e9, 0.026)]) == pytest.approx((0.002, 1e-11))
    # Noise that would make the fixed cost negative: it is 0 and the FLOPs take the time.
    c, per_flop = split_micro_batch_cost([(4, 1e9, 0.020), (8, 1e9, 0.019)])
    assert c == 0 and per_flop == pytest.approx(0.0195 / 1e9)
    with pytest.raises(UserError):
        split_micro_batch_cost([])


def test_comm_figures_invert_the_all_reduce_model():
    timings = [(n, allreduce_s(n, 2, 8e8, 6e-4)) for n in (65536, 4 << 20)]
    comm = comm_from_allreduces(2, timings)
    assert comm.intra_node_bytes_per_s == pytest.approx(8e8) and comm.latency_s == pytest.approx(6e-4)


def test_layouts_predict_what_the_profile_implies():
    """The CPU terms the calibration added: a fixed cost per micro-batch (so halving the
    micro-batch is slower), collectives that make tp2 on 2 processes slower than dp2, and a
    heterogeneous pipeline that overlaps the modules."""
    homogeneous_dp2 = ["layout.mode=homogeneous", "layout.llm.tp=1"]
    assert _predict(TRUTH, ONE_PROCESS, 1) > _predict(TRUTH, ONE_PROCESS, 2)
    assert _predict(TRUTH, homogeneous_dp2) < _predict(TRUTH, ONE_PROCESS) < _predict(TRUTH, [])
    slow_comm = from_plain(CalibrationProfile, {**json.loads(TRUTH.to_json()), "comm": {"latency_s": 5e-3}}, "p")
    assert _predict(slow_comm, []) - _predict(TRUTH, []) > 0.1  # ~50 collectives per step
    assert _predict(slow_comm, ONE_PROCESS) == pytest.approx(_predict(TRUTH, ONE_PROCESS))
    assert _predict(TRUTH, HETERO) < _predict(TRUTH, ONE_PROCESS)


def test_quiet_run_repeats_a_disturbed_run(monkeypatch):
    monkeypatch.setattr(measure, "wait_until_quiet", lambda timeout: 0.0)
    monkeypatch.setattr(measure, "usable_cpus", lambda: 2)
    loads = iter([0.7, 0.05, 0.0])
    runs = []

    def run():
        runs.append(TimedRun(None, [], next(loads), 1.0))
        return runs[-1]

    said = []
    assert quiet_run(run, procs=2, echo=said.append, attempts=3).foreign_load == 0.05
    assert len(runs) == 2 and "repeating" in said[0]
    # A 1-process job on 2 cores leaves one core to others.
    loads = iter([0.4])
    assert quiet_run(run, procs=1, echo=said.append).foreign_load == 0.4


def test_cpu_plan_with_a_fitted_profile(tmp_path):
    path = tmp_path / "calib.json"
    path.write_text(fit_profile([[_timed_run(ONE_PROCESS, 2)], [_timed_run(ONE_PROCESS, 1)]], TRUTH.comm, {}).to_json())
    result = CliRunner().invoke(cli, ["plan", "llava", "--preset", "tiny", "--gpu", "cpu", "--profile", str(path)])
    assert result.exit_code == 0, result.output
    assert "homogeneous" in result.output


@pytest.mark.slow
def test_calibrate_command_writes_a_profile_plan_uses(tmp_path):
    """One real calibration (two short runs of a 1-process job and the gloo timing)."""
    out = tmp_path / "calib.json"
    result = CliRunner().invoke(cli, ["calibrate", "llava", *[a for s in ONE_PROCESS for a in ("--set", s)],
                                      "--steps", "5", "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert set(profile.modules) == {"vision", "llm"} and profile.machine.device == "cpu"
    assert all(m.flops_per_s > 0 for m in profile.modules.values())
    assert profile.comm.latency_s > 0 and profile.comm.intra_node_bytes_per_s > 0
    assert profile.provenance["micro_batch_sizes"] == "2,1"
    plan = CliRunner().invoke(cli, ["plan", "llava", "--preset", "tiny", "--gpu", "cpu", "--profile", str(out)])
    assert plan.exit_code == 0, plan.output
