"""The jobs this toolkit submitted: a registry, their live state, their logs, cancelling them.

``submit`` appends one line per job to ``$MIMO_TOOLKIT_HOME/jobs.jsonl`` (default
``~/.mimo-toolkit``): scheduler, job id, run directory, name. Live state comes from the
scheduler (``squeue`` for queued/running Slurm jobs, ``sacct`` once they ended) and from the
run directory (``exit_status.json``, ``metrics.jsonl``, ``failures/``), so ``status`` can say
both "COMPLETED" and "step 50/50, loss 3.21".

A JOB on the command line is a job id, a job name (the newest with that name) or a run
directory path. Pure Python (no torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .run_dir import RunDir

ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def registry_path() -> Path:
    home = os.environ.get("MIMO_TOOLKIT_HOME") or os.path.join(os.path.expanduser("~"), ".mimo-toolkit")
    return Path(home) / "jobs.jsonl"


@dataclass
class JobRecord:
    job_id: str
    scheduler: str
    run_dir: str
    job_name: str
    recipe: str
    preset: str
    submitted: float

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.run_dir)


def record_submission(rec: JobRecord) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(asdict(rec)) + "\n")


def all_jobs() -> list[JobRecord]:
    path = registry_path()
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(JobRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


def find_job(ref: str) -> JobRecord:
    """A registered job by id or name (newest first), or an unregistered run directory."""
    jobs = all_jobs()
    for rec in reversed(jobs):
        if ref in (rec.job_id, rec.job_name) or (Path(ref).exists() and Path(ref).resolve() == Path(rec.run_dir).resolve()):
            return rec
    if RunDir(ref).job_file.exists():
        rd = RunDir(ref)
        job = rd.read_job()["job"]
        return JobRecord(str(rd.path), "local", str(rd.path), job["job_name"], job["recipe"], job["preset"], 0.0)
    raise UserError(f"no job {ref!r}: not a job id or name from `mimo-toolkit list`, nor a run directory")


# ---- live state --------------------------------------------------------------------------


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError):
        return ""


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Scheduler state of Slurm jobs: squeue while they are queued or running, sacct after."""
    if not job_ids:
        return {}
    states = {}
    for line in _run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"]).splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    missing = [j for j in job_ids if j not in states]
    if missing:
        for line in _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"]).splitlines():
            parts = line.split("|")
            if len(parts) == 2:
                states[parts[0]] = parts[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def run_state(rec: JobRecord) -> str:
    """State from the run directory alone (local jobs, or when the scheduler forgot the job)."""
    status = rec.rundir.read_exit_status()
    if status:
        return {"completed": "COMPLETED", "preempted": "PREEMPTED", "failed": "FAILED"}[status["reason"]]
    return "RUNNING" if rec.rundir.metrics_file.exists() else "UNKNOWN"


def state_of(rec: JobRecord, slurm: dict[str, str] | None = None) -> str:
    if rec.scheduler == "slurm":
        states = slurm if slurm is not None else slurm_states([rec.job_id])
        if rec.job_id in states:
            return states[rec.job_id]
    return run_state(rec)


def progress(rec: JobRecord) -> dict:
    """Last step, total steps and last loss, from metrics.jsonl."""
    rows = rec.rundir.read_metrics() if rec.rundir.metrics_file.exists() else []
    total = None
    if rec.rundir.job_file.exists():
        total = rec.rundir.read_job()["job"]["train"]["steps"]
    last = rows[-1] if rows else {}
    return {"step": last.get("step", 0), "steps": total, "loss": last.get("loss")}


# ---- logs ----------------------------------------------------------------------------------


def rank_log(rec: JobRecord, rank: int) -> Path:
    path = rec.rundir.rank_log(rank)
    if not path.exists():
        logs = sorted(p.name for p in rec.rundir.log_dir.glob("rank-*.log")) if rec.rundir.log_dir.exists() else []
        raise UserError(f"no log for rank {rank} in {rec.rundir.log_dir} (have: {', '.join(logs) or 'none yet'})")
    return path


def follow(path: Path, poll_s: float = 0.5, done=lambda: False):
    """Yield a file's lines as they are written, until ``done()`` and nothing new arrives."""
    with path.open(errors="replace") as f:
        while True:
            line = f.readline()
            if line:
                yield line
            elif done():
                return
            else:
                time.sleep(poll_s)


def first_error(rec: JobRecord) -> dict | None:
    """The earliest failing rank: its recorded exception and traceback, or what rank 0
    concluded for a rank that died without a report (killed)."""
    failures = rec.rundir.failures()
    real = [f for f in failures if not f.get("comm_error")]
    status = rec.rundir.read_exit_status() or {}
    if real:
        return real[0]
    if status.get("reason") == "failed":
        rank = status.get("first_failed_rank")
        return {"rank": rank, "error": status.get("message", ""), "traceback": _log_tail(rec, rank)}
    return failures[0] if failures else None


def _log_tail(rec: JobRecord, rank: int | None, lines: int = 30) -> str:
    if rank is None or not rec.rundir.rank_log(rank).exists():
        return ""
    return "".join(rec.rundir.rank_log(rank).read_text(errors="replace").splitlines(keepends=True)[-lines:])


# ---- cancel --------------------------------------------------------------------------------


def cancel(rec: JobRecord) -> str:
    if rec.scheduler == "slurm":
        if shutil.which("scancel") is None:
            raise UserError("scancel not found on PATH: run this on a Slurm login node")
        proc = subprocess.run(["scancel", rec.job_id], capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"scancel {rec.job_id} failed: {proc.stderr.strip()}")
        return f"cancelled Slurm job {rec.job_id}"
    if rec.scheduler == "torchx":
        proc = subprocess.run(["torchx", "cancel", rec.job_id], capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"torchx cancel {rec.job_id} failed: {proc.stderr.strip()}")
        return f"cancelled TorchX app {rec.job_id}"
    raise UserError(f"job {rec.job_id} ran with --scheduler local; stop it with Ctrl-C in its terminal")
