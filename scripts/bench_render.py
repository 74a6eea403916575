#!/usr/bin/env python3
"""Wall time of rendering a Slurm job with mimo-toolkit against TorchX's own dry run.

    python scripts/bench_render.py [--runs 11]

Runs, alternating so that machine noise hits both alike:

* ``mimo-toolkit render llava --scheduler slurm --nodes 4 -o DIR`` (a fresh DIR each run)
* ``torchx run --dryrun -s slurm dist.ddp -j 4x8 --script train.py``

and prints the median of each and their ratio (target: <= 0.5). Both console scripts are
taken from beside this interpreter and run with PATH set to that directory only: TorchX's
slurm dry run calls ``sinfo`` when it is on PATH, which without a reachable controller
costs seconds that have nothing to do with rendering (``--system-path`` keeps your PATH).
Profile a slow CLI with ``python -X importtime $(which mimo-toolkit) render ...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wall(cmd: list[str], cwd: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11, help="runs of each command (>= 7)")
    parser.add_argument("--system-path", action="store_true", help="run with your PATH, not the venv's bin only")
    args = parser.parse_args()
    env = dict(os.environ) if args.system_path else dict(os.environ, PATH=str(BIN))
    # The untimed warm-up runs write stale bytecode as any installed package has it;
    # with PYTHONDONTWRITEBYTECODE a recently edited checkout recompiles on every run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    runs = max(args.runs, 7)
    mimo = [str(BIN / "mimo-toolkit"), "render", "llava", "--scheduler", "slurm", "--nodes", "4", "-o"]
    torchx = [str(BIN / "torchx"), "run", "--dryrun", "-s", "slurm", "dist.ddp", "-j", "4x8", "--script", "train.py"]
    times: dict[str, list[float]] = {"mimo-toolkit render": [], "torchx --dryrun": []}
    with tempfile.TemporaryDirectory() as tmp:
        wall(mimo + [f"{tmp}/warm"], tmp, env)  # warm the page cache for both, untimed
        wall(torchx, tmp, env)
        for i in range(runs):
            times["mimo-toolkit render"].append(wall(mimo + [f"{tmp}/run{i}"], tmp, env))
            times["torchx --dryrun"].append(wall(torchx, tmp, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"runs: {runs} each, alternating; PATH={'yours' if args.system_path else BIN}")
    print(f"  {' '.join(mimo[1:])} DIR")
    print(f"  {' '.join(torchx[1:])}")
    for name, median in medians.items():
        spread = f"min {min(times[name]):.3f} s, max {max(times[name]):.3f} s"
        print(f"{name:>20}: median {median:.3f} s ({spread})")
    ratio = medians["mimo-toolkit render"] / medians["torchx --dryrun"]
    print(f"{'ratio':>20}: {ratio:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
