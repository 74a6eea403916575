#!/usr/bin/env python3
"""Time ``mimo-toolkit plan`` on a large cluster (default 512 nodes x 8 GPUs).

Prints, per recipe, the median (and min/max) of ``--runs`` timings of the library call
(``make_plan``: load the recipe, search, validate the results) and of the whole command in a
fresh interpreter (imports and printing included)::

    .venv/bin/python scripts/bench_planner.py
    .venv/bin/python scripts/bench_planner.py --nodes 64 --runs 9 llava
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from mimo_toolkit.planner.plan import PlanRequest, make_plan


def _time(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def _line(label: str, times: list[float]) -> str:
    return (f"{label:<34} median {statistics.median(times):.3f} s  "
            f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", default=["llava", "big_encoder", "multi_encoder"])
    parser.add_argument("--nodes", type=int, default=512)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=4096,
                        help="train.global_batch_size (the presets' few hundred cannot fill 4096 GPUs)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be >= 5 (the median of at least five runs is reported)")
    sets = (f"train.global_batch_size={args.global_batch}",)
    print(f"{args.nodes} nodes x {args.gpus_per_node} GPUs, global batch {args.global_batch}, {args.runs} runs each")
    for recipe in args.recipes:
        req = PlanRequest(recipe, nodes=args.nodes, gpus_per_node=args.gpus_per_node, sets=sets)
        plan = make_plan(req)
        r = plan.result
        print(f"{recipe}: {r.log.considered:,} layouts, {r.log.evaluated:,} estimated; best "
              f"{plan.best.mode} {plan.best.step_s:.3f} s/step")
        print("  " + _line("make_plan (library)", _time(lambda: make_plan(req), args.runs)))
        cmd = [sys.executable, "-c", "from mimo_toolkit.cli import main; main()", "plan", recipe,
               "--nodes", str(args.nodes), "--gpus-per-node", str(args.gpus_per_node), "--set", sets[0]]
        cli = _time(lambda: subprocess.run(cmd, check=True, capture_output=True), args.runs)
        print("  " + _line("mimo-toolkit plan (fresh process)", cli))


if __name__ == "__main__":
    main()
