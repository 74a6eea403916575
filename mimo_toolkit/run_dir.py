"""The run directory: the files a job, its launcher and the CLI share.

One run directory holds one training run across requeues and restarts::

    RUN_DIR/
      job.json              resolved config the entrypoint reads (written by render/submit)
      launch/               rendered launch files (job.sbatch, torchx.sh, .torchxconfig)
      logs/rank-00003.log   one log per global rank (all attempts, appended)
      logs/slurm-<job>-<restart>.out   the batch script's own output (Slurm)
      metrics.jsonl         one JSON object per optimizer step (rank 0)
      checkpoints/step-00000010/  complete checkpoints; `latest` names the newest
      failures/rank-00003.json    first exception of a failed rank (time, rank, traceback)
      exit_status.json      how the last attempt ended (see :class:`ExitReason`)

Exit protocol. torchrun turns any worker exit code into its own code 1, so a worker's
code alone cannot tell the batch script what happened. On SIGTERM/SIGUSR2 the ranks finish
the current step, save a checkpoint, rank 0 writes ``exit_status.json`` with reason
``preempted``, and every rank exits with :data:`EXIT_REQUEUE`. The sbatch template requeues
the job when it received the preemption signal itself and the marker says ``preempted``.

Pure Python: the CLI reads these files without importing torch.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal

#: Exit code of a rank that saved a checkpoint after a preemption signal and wants a requeue
#: (EX_TEMPFAIL from sysexits.h: "temporary failure, retry").
EXIT_REQUEUE = 75
#: Exit code of a rank whose peer failed first (it did not fail itself).
EXIT_PEER_FAILED = 3

ExitReason = Literal["completed", "preempted", "failed"]

JOB_FILE = "job.json"
LAUNCH_DIR = "launch"
LOG_DIR = "logs"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
FAILURE_DIR = "failures"
EXIT_STATUS_FILE = "exit_status.json"


class StopRequest:
    """SIGTERM / SIGUSR2 asked the job to stop: finish the step, save, exit for a requeue.

    Installed first thing in the entrypoint (before torch is imported), so that a preemption
    signal arriving during start-up is remembered instead of killing the process (SIGUSR2's
    default action)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal = ""

    def install(self) -> "StopRequest":
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name
        self.event.set()


class RunDir:
    """Paths inside a run directory (nothing is created until asked)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).absolute()

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def launch_dir(self) -> Path:
        return self.path / LAUNCH_DIR

    @property
    def log_dir(self) -> Path:
        return self.path / LOG_DIR

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def failure_dir(self) -> Path:
        return self.path / FAILURE_DIR

    @property
    def exit_status_file(self) -> Path:
        return self.path / EXIT_STATUS_FILE

    def rank_log(self, rank: int) -> Path:
        return self.log_dir / f"rank-{rank:05d}.log"

    def failure_file(self, rank: int) -> Path:
        return self.failure_dir / f"rank-{rank:05d}.json"

    # ---- reading ---------------------------------------------------------------------
    def read_job(self) -> dict[str, Any]:
        return json.loads(self.job_file.read_text())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        rows = []
        for line in self.metrics_file.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
        return rows

    def read_exit_status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.exit_status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def failures(self) -> list[dict[str, Any]]:
        """Recorded rank failures, earliest first."""
        out = []
        for path in sorted(self.failure_dir.glob("rank-*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue
        return sorted(out, key=lambda f: (f.get("time", 0.0), f.get("rank", 0)))

    # ---- writing ---------------------------------------------------------------------
    def write_exit_status(self, reason: ExitReason, **fields: Any) -> None:
        write_json_atomic(self.exit_status_file, {"reason": reason, "time": time.time(), **fields})


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
