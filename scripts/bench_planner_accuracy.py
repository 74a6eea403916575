#!/usr/bin/env python3
"""Is the planner honest against measurement? Calibrate once, then predict other layouts.

1. Calibrate on ONE layout (llava tiny, homogeneous tp1 on 1 process: module times with no
   communication in them) with ``mimo-toolkit calibrate``'s library call, or load --profile.
2. Run each layout below as a real job on this machine, --repeats times, interleaved (a burst
   of load from other processes then hits different layouts), each on a quiet machine.
3. Print the planner's prediction (``evaluate_layout`` on the calibrated CPU machine) against
   the median of the runs' median step times, the spread of those medians (run-to-run noise),
   the error, and whether ordering the layouts by prediction gives the measured order.

    python scripts/bench_planner_accuracy.py                     # ~6 minutes on 2 cores
    python scripts/bench_planner_accuracy.py --profile calib.json --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mimo_toolkit.planner.calibration import compare_step_times, load_profile, machine_from_profile
from mimo_toolkit.planner.candidate import evaluate_layout
from mimo_toolkit.planner.measure import TimedRun, calibrate, quiet_run, run_training
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


#: (name, recipe, overrides of the tiny preset): layouts whose step times differ clearly.
LAYOUTS = [
    ("homogeneous tp1 dp2, 2 procs", "llava", ["layout.mode=homogeneous", "layout.llm.tp=1"]),
    ("homogeneous tp1, 1 proc", "llava", CALIBRATION[1]),
    ("heterogeneous vision[0] llm[1]", "llava", hetero(2, vision="1,1,1,0", llm="1,1,1,1")),
    ("colocated llm tp2 + vision dp2", "llava", []),
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
    return evaluate_layout(problem, job.layout, job.train.micro_batch_size).step_s


def ranking(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=values.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", help="use this profile instead of calibrating")
    parser.add_argument("--repeats", type=int, default=2, help="runs per layout (default 2)")
    parser.add_argument("--steps", type=int, default=14, help="steps per run, 2 of them warm-up (default 14)")
    parser.add_argument("--out", default="calibration-bench.json", help="where the calibration is written")
    args = parser.parse_args()

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.profile:
        profile = load_profile(args.profile)
    else:
        result = calibrate(CALIBRATION[0], "tiny", CALIBRATION[1], echo=echo)
        profile = result.profile
        Path(args.out).write_text(profile.to_json())
        echo(f"calibrated in {result.seconds:.0f} s on llava tiny, {' '.join(CALIBRATION[1])}; wrote {args.out}")
    rows = [Row(name, predict(profile, recipe, sets), []) for name, recipe, sets in LAYOUTS]
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        for repeat in range(args.repeats):
            for row, (name, recipe, sets) in zip(rows, LAYOUTS):
                procs = resolve_job(recipe, "tiny", sets=sets).world_size
                run = quiet_run(lambda: run_training(recipe, "tiny", sets, args.steps, Path(tmp) / f"{repeat}-{name}"),
                                procs, echo, attempts=3)
                row.runs.append(run)
                echo(f"  {name}: {run.median_step_s() * 1e3:.1f} ms/step (others' CPU {run.foreign_load:.0%})")
    print(f"\n{'layout':34s} {'predicted':>10s} {'measured':>10s} {'spread':>17s} {'error':>7s}")
    for row in rows:
        spread = f"{min(row.medians) * 1e3:.1f}-{max(row.medians) * 1e3:.1f} ms"
        print(f"{row.name:34s} {row.predicted_s * 1e3:8.1f}ms {row.measured_s * 1e3:8.1f}ms {spread:>17s} "
              f"{row.error:+7.1%}")
    by_prediction = ranking([r.predicted_s for r in rows])
    by_measurement = ranking([r.measured_s for r in rows])
    worst = max(abs(r.error) for r in rows)
    print(f"\nranking by prediction:  {' < '.join(rows[i].name for i in by_prediction)}")
    print(f"ranking by measurement: {' < '.join(rows[i].name for i in by_measurement)}")
    print(f"same ranking: {'yes' if by_prediction == by_measurement else 'NO'}; "
          f"largest error {worst:.1%} (target 20%)")


if __name__ == "__main__":
    main()
