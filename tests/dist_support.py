"""Run real multi-process training jobs (torchrun, gloo) from tests and read their metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.run_dir import RunDir
from mimo_toolkit.torchrun import torchrun_args, train_args


@dataclass
class JobRun:
    run_dir: RunDir
    returncode: int
    output: str
    seconds: float

    @property
    def metrics(self) -> list[dict]:
        return self.run_dir.read_metrics()

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.metrics]


def write_job(run_dir: Path, recipe: str, preset: str = "tiny", sets=(), nodes=None) -> tuple[Path, int]:
    """Resolve a job as the CLI would and write its job.json; returns (path, world size)."""
    resolved = resolve_job(recipe, preset, sets=list(sets), nodes=nodes)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "job.json"
    path.write_text(json.dumps(resolved.manifest(), indent=2))
    return path, resolved.world_size


def torchrun_cmd(config: Path, run_dir: Path, nproc: int) -> list[str]:
    """The launchers' own torchrun command line, on one node (a free port), polling the
    workers every 0.2 s so that failure tests end quickly."""
    return torchrun_args(python=sys.executable, nnodes=1, nproc_per_node=nproc, rdzv_endpoint="localhost:0",
                         module_args=train_args(str(config), str(run_dir)), monitor_interval=0.2)


def run_job(run_dir: Path, recipe: str, preset: str = "tiny", sets=(), timeout: float = 300, nodes=None,
            env: dict | None = None) -> JobRun:
    """Train to completion (or failure) and return what happened; ``env`` adds variables."""
    config, world = write_job(run_dir, recipe, preset, sets, nodes)
    start = time.monotonic()
    proc = subprocess.run(torchrun_cmd(config, run_dir, world), capture_output=True, text=True, timeout=timeout,
                          env=_env(env))
    return JobRun(RunDir(run_dir), proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


def start_job(run_dir: Path, recipe: str, preset: str = "tiny", sets=(), nodes=None,
              env: dict | None = None) -> subprocess.Popen:
    config, world = write_job(run_dir, recipe, preset, sets, nodes)
    return subprocess.Popen(torchrun_cmd(config, run_dir, world), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(env), start_new_session=True)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    rd = RunDir(run_dir)
    while time.monotonic() < deadline:
        rows = rd.read_metrics() if rd.metrics_file.exists() else []
        if rows and rows[-1]["step"] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, **(extra or {})}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def worker_pid(rank: int) -> int:
    """PID of the training worker with global rank ``rank`` (found by its environment; its
    data-loading processes, forked from it, have the same environment and command line)."""
    found = {}  # pid -> parent pid, of the processes with this rank's environment
    for pid in subprocess.run(["pgrep", "-f", "mimo_toolkit.train"], capture_output=True, text=True).stdout.split():
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            parent = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"LOCAL_RANK=") for e in env):
            found[pid] = parent
    for pid, parent in found.items():
        if parent not in found:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank}")


# ---- the reference runs several test modules compare with (session fixtures, see conftest) ----

HOMOGENEOUS_TP1 = ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> JobRun:
    """Homogeneous TP1 DP2 run of llava tiny, 10 steps (the layout every other one must match)."""
    run = run_job(tmp_path_factory.mktemp("ref"), "llava", sets=["train.steps=10", *HOMOGENEOUS_TP1])
    assert run.returncode == 0, run.output[-3000:]
    return run


@pytest.fixture(scope="session")
def colocated(tmp_path_factory) -> JobRun:
    """llava tiny's own layout (LLM TP2 DP1, vision TP1 DP2 colocated), 10 steps."""
    run = run_job(tmp_path_factory.mktemp("colocated"), "llava", sets=["train.steps=10"])
    assert run.returncode == 0, run.output[-3000:]
    return run
