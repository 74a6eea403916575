#!/usr/bin/env python3
"""Is the planner honest against measurement? Calibrate once, then predict other layouts.

The machine drifts (a 1-process step takes 85 ms in one quarter of an hour, 105 ms in the
next), so calibration and validation are measured in the same rounds, and fitted once:

  each round: the gloo all-reduce timing; the CALIBRATION layout (llava tiny, homogeneous
  tp1 on 1 process: module times with no communication in them) at micro-batch 2 and 1;
  every layout of LAYOUTS once (fresh runs).

Then ONE profile is fitted from the calibration layout's runs of all rounds (what
``mimo-toolkit calibrate`` does with one round). The calibration layout fits the profile and
is not scored: LAYOUTS are all out of sample. For every one of them the planner's
prediction (``evaluate_layout`` on the calibrated CPU machine) is printed against the median
of its runs' median step times, the spread of those medians (run-to-run noise), the error,
and whether ordering the layouts by prediction gives the measured order. Each run waits for
a quiet machine and is repeated (up to 3 times) if other processes disturbed it.

    python scripts/bench_planner_accuracy.py                 # 3 rounds: ~5 minutes on 2 cores
    python scripts/bench_planner_accuracy.py --profile calib.json --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mimo_toolkit.planner.calibration import ProfileComm, compare_step_times, load_profile, machine_from_profile
from mimo_toolkit.planner.candidate import evaluate_layout
from mimo_toolkit.planner.measure import TimedRun, fit_profile, measure_comm, quiet_run, run_training, wait_until_quiet
from mimo_toolkit.planner.workload import make_problem
from mimo_toolkit.resolve import resolve_job

CALIBRATION = ("llava", ["layout.mode=homogeneous", "layout.llm.tp=1", "cluster.procs_per_node=1"])


def hetero(procs: int, **modules: str) -> list[str]:
    """Overrides for a heterogeneous layout: module="tp,pp,dp,rank_offset"."""
    sets = [f"cluster.procs_per_node={procs}", "layout.mode=heterogeneous"]
    for name, spec in modules.items():
        for key, value in zip(("tp", "pp", "dp", "rank_offset"), spec.split(",")):
            sets.append(f"layout.{name}.{key}={value}")
    return sets


#: (name, recipe, overrides of the tiny preset): held-out layouts whose step times differ clearly
#: (the calibration layout is not among them).
LAYOUTS = [
    ("homogeneous tp1 dp2, 2 procs", "llava", ["layout.mode=homogeneous", "layout.llm.tp=1"]),
    ("homogeneous tp1 dp2, full recompute", "llava", ["layout.mode=homogeneous", "layout.llm.tp=1",
                                                      "train.recompute.llm=full", "train.recompute.vision=full"]),
    ("heterogeneous vision[0] llm[1]", "llava", hetero(2, vision="1,1,1,0", llm="1,1,1,1")),
    ("colocated llm tp2 + vision dp2", "llava", []),
    ("colocated llm pp2 + vision dp2", "llava", ["layout.llm.tp=1", "layout.llm.pp=2"]),
    ("homogeneous tp2, 2 procs", "llava", ["layout.mode=homogeneous", "layout.llm.tp=2", "layout.vision.tp=2"]),
]


@dataclass
class Row:
    name: str
    predicted_s: float
    runs: list[TimedRun]

    @property
    def medians(self) -> list[float]:
        return [r.median_step_s() for r in self.runs]

    @property
    def measured_s(self) -> float:
        return statistics.median(self.medians)

    @property
    def error(self) -> float:
        return compare_step_times(self.predicted_s, [self.measured_s], warmup=0).error


def predict(profile, recipe: str, sets: list[str]) -> float:
    resolved = resolve_job(recipe, "tiny", sets=sets)
    job = resolved.config
    problem = make_problem(job, machine_from_profile(profile, "bench"), 1, resolved.world_size)
    return evaluate_layout(problem, job.layout, job.train.micro_batch_size, job.train.recompute).step_s


def ranking(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=values.__getitem__)


def timed(recipe: str, sets: list[str], steps: int, run_dir: Path, echo) -> TimedRun:
    procs = resolve_job(recipe, "tiny", sets=sets).world_size
    return quiet_run(lambda: run_training(recipe, "tiny", sets, steps, run_dir), procs, echo, attempts=3, wait_s=120)


def measure_rounds(rounds: int, steps: int, calibrating: bool, echo):
    """(comm figures, calibration runs by micro-batch size, validation runs by layout) of every round."""
    comms, calibration, validation = [], {2: [], 1: []}, [[] for _ in LAYOUTS]
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        work = Path(tmp)
        for r in range(rounds):
            echo(f"round {r + 1}/{rounds}")
            if calibrating:
                wait_until_quiet(120)
                comms.append(measure_comm(work))
                for mbs, runs in calibration.items():
                    sets = [*CALIBRATION[1], f"train.micro_batch_size={mbs}"]
                    runs.append(timed(CALIBRATION[0], sets, steps, work / f"calibration-{r}-{mbs}", echo))
                    echo(f"  calibration, micro-batch {mbs}: {runs[-1].median_step_s() * 1e3:.1f} ms/step")
            for i, (name, recipe, sets) in enumerate(LAYOUTS):
                validation[i].append(timed(recipe, sets, steps, work / f"{r}-{i}", echo))
                run = validation[i][-1]
                echo(f"  {name}: {run.median_step_s() * 1e3:.1f} ms/step (others' CPU {run.foreign_load:.0%})")
    return comms, calibration, validation


def median_comm(comms: list[ProfileComm]) -> ProfileComm:
    return ProfileComm(intra_node_bytes_per_s=statistics.median(c.intra_node_bytes_per_s for c in comms),
                       latency_s=statistics.median(c.latency_s for c in comms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", help="use this profile instead of calibrating")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of runs (default 3)")
    parser.add_argument("--steps", type=int, default=12, help="steps per run, 2 of them warm-up (default 12)")
    parser.add_argument("--out", help="also write the fitted profile here")
    args = parser.parse_args()

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    comms, calibration, validation = measure_rounds(args.rounds, args.steps, not args.profile, echo)
    if args.profile:
        profile = load_profile(args.profile)
    else:
        provenance = {"sets": " ".join(CALIBRATION[1]), "threads_per_process": "1", "rounds": str(args.rounds)}
        profile = fit_profile([calibration[2], calibration[1]], median_comm(comms), provenance)
        if args.out:
            Path(args.out).write_text(profile.to_json())
    rows = [Row(name, predict(profile, recipe, sets), runs) for (name, recipe, sets), runs in zip(LAYOUTS, validation)]
    report(rows, profile, time.monotonic() - started)


def report(rows: list[Row], profile, seconds: float) -> None:
    rates = ", ".join(f"{k} {m.flops_per_s / 1e9:.3g} GFLOP/s + {m.seconds_per_micro_batch * 1e3:.2f} ms/micro-batch"
                      for k, m in sorted(profile.modules.items()))
    print(f"profile: {rates}; all-reduce {profile.comm.intra_node_bytes_per_s / 1e9:.2f} GB/s, "
          f"{profile.comm.latency_s * 1e6:.0f} us/hop; step overhead {profile.step_overhead_s * 1e3:.1f} ms")
    print(f"fitted on (not scored): llava tiny {' '.join(CALIBRATION[1])}, micro-batch 2 and 1")
    print(f"\n{'layout (held out)':38s} {'predicted':>10s} {'measured':>10s} {'spread of runs':>17s} {'error':>7s}")
    for row in rows:
        spread = f"{min(row.medians) * 1e3:.1f}-{max(row.medians) * 1e3:.1f} ms"
        print(f"{row.name:38s} {row.predicted_s * 1e3:8.1f}ms {row.measured_s * 1e3:8.1f}ms {spread:>17s} "
              f"{row.error:+7.1%}")
    by_prediction = ranking([r.predicted_s for r in rows])
    by_measurement = ranking([r.measured_s for r in rows])
    print(f"\nranking by prediction:  {' < '.join(rows[i].name for i in by_prediction)}")
    print(f"ranking by measurement: {' < '.join(rows[i].name for i in by_measurement)}")
    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
    close = [(a, b) for a, b in pairs if min(a.medians) <= max(b.medians) and min(b.medians) <= max(a.medians)]
    # A pair ordered differently by prediction and measurement, whose runs do not overlap.
    wrong = [(a, b) for a, b in pairs if (a, b) not in close
             and (a.predicted_s < b.predicted_s) != (a.measured_s < b.measured_s)]
    print(f"same ranking: {'yes' if by_prediction == by_measurement else 'NO'}; pairs ordered wrongly beyond "
          f"the run-to-run noise: {len(wrong)}; largest error {max(abs(r.error) for r in rows):.1%} (target 20%); "
          f"{seconds / 60:.1f} minutes")
    if close:
        print("pairs whose runs overlap (their order is within the noise): "
              + "; ".join(f"{a.name} / {b.name}" for a, b in close))


if __name__ == "__main__":
    main()
