"""Run a training job on this machine for a benchmark (torchrun, gloo) and read its run directory.

Shared by ``bench_memory.py`` and ``bench_checkpoint.py``: the job goes through ``render``'s
``write_job`` and the real entry point, one thread per process (two processes share this
machine's cores), its output in ``RUN_DIR/bench.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mimo_toolkit.launch import write_job
from mimo_toolkit.planner.measure import torchrun
from mimo_toolkit.render import job_env
from mimo_toolkit.resolve import ResolvedJob, resolve_job
from mimo_toolkit.run_dir import RunDir
from mimo_toolkit.torchrun import TRAIN_MODULE, train_args


def run_job(recipe: str, sets: list[str], run_dir: Path, timeout: float = 1800,
            env: dict[str, str] | None = None) -> tuple[ResolvedJob, RunDir]:
    """Train the job to completion; exits the script with the log's path if it fails."""
    resolved = resolve_job(recipe, "tiny", sets=sets)
    rd = RunDir(run_dir)
    write_job(resolved, "local", rd.path, force=True)
    cmd = torchrun(resolved.world_size, TRAIN_MODULE, train_args(str(rd.job_file), str(rd.path)))
    full_env = {**os.environ, **job_env(resolved), "OMP_NUM_THREADS": "1", "MIMO_CPU_THREADS": "1", **(env or {})}
    with (rd.path / "bench.log").open("w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, timeout=timeout)
    if done.returncode:
        sys.exit(f"the run failed; see {rd.path / 'bench.log'}")
    return resolved, rd
