"""The jobs this toolkit submitted: a registry, their live state, their logs, cancelling them.

``submit`` appends one line per job to ``$MIMO_TOOLKIT_HOME/jobs.jsonl`` (default
``~/.mimo-toolkit``): scheduler, job id, run directory, name. Live state comes from the
job's scheduler backend (:mod:`mimo_toolkit.schedulers`: squeue/sacct for Slurm, TorchX's
runner for TorchX apps) and from the run directory (``exit_status.json``, ``metrics.jsonl``, ``failures/``), so ``status`` can say
both "COMPLETED" and "step 50/50, loss 3.21".

A JOB on the command line is a job id, a job name (the newest with that name) or a run
directory path. Pure Python (no torch).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .run_dir import RunDir

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
    array_id: str | None = None
    """The sweep (Slurm job array) this job is an element of."""

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


def find_jobs(ref: str) -> list[JobRecord]:
    """The elements of the sweep ``ref`` names (its array id), else the one job
    :func:`find_job` finds."""
    elements = [rec for rec in all_jobs() if rec.array_id == ref]
    return elements or [find_job(ref)]


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


def states(records: list[JobRecord]) -> dict[str, str]:
    """Each job's state by job id: its backend's answer, else the run directory's
    (:func:`run_state`). One query per backend, whatever the number of jobs."""
    from .schedulers import get_backend

    by_backend: dict[str, list[JobRecord]] = {}
    for rec in records:
        by_backend.setdefault(rec.scheduler, []).append(rec)
    answers: dict[str, str] = {}
    for name, recs in by_backend.items():
        answers.update(get_backend(name).states(recs))
    return {rec.job_id: answers.get(rec.job_id) or run_state(rec) for rec in records}


def run_state(rec: JobRecord) -> str:
    """State from the run directory alone (local jobs, or when the scheduler forgot the job)."""
    status = rec.rundir.read_exit_status()
    if status:
        return {"completed": "COMPLETED", "preempted": "PREEMPTED", "failed": "FAILED"}[status["reason"]]
    return "RUNNING" if rec.rundir.metrics_file.exists() else "UNKNOWN"


def state_of(rec: JobRecord) -> str:
    return states([rec])[rec.job_id]


def is_active(rec: JobRecord, state: str) -> bool:
    """The job may still write logs (``logs --follow`` keeps waiting)."""
    from .schedulers import get_backend

    return state in get_backend(rec.scheduler).active_states


def progress(rec: JobRecord) -> dict:
    """From metrics.jsonl: last step, total steps, last loss, tokens/s and the ETA (the
    median step time of the last 20 steps times the steps left)."""
    rows = rec.rundir.read_metrics() if rec.rundir.metrics_file.exists() else []
    total = None
    if rec.rundir.job_file.exists():
        total = rec.rundir.read_job()["job"]["train"]["steps"]
    last = rows[-1] if rows else {}
    step = last.get("step", 0)
    recent = sorted(r["step_time_s"] for r in rows[-20:] if isinstance(r.get("step_time_s"), (int, float)))
    eta = recent[len(recent) // 2] * (total - step) if recent and total and step < total else None
    return {"step": step, "steps": total, "loss": last.get("loss"), "tokens_per_s": last.get("tokens_per_s"),
            "eta_s": eta}


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def table(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Rows as aligned plain-text lines (columns padded to their widest cell; the columns in
    ``right`` right-aligned); the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        cells[-1] = row[-1]
        lines.append("  ".join(cells).rstrip())
    return lines


def code_version(rec: JobRecord) -> str:
    """The toolkit's commit the run was submitted with (job.json's provenance), e.g.
    ``0.1.0 a1b2c3d4e5f6 (dirty, diff 9f8e7d6c) snapshot``."""
    try:
        data = rec.rundir.read_job()
    except (OSError, ValueError):
        return "-"
    prov = data.get("provenance") or {}
    toolkit = prov.get("toolkit") or {}
    text = str(prov.get("toolkit_version") or data.get("toolkit_version") or "-")
    if toolkit.get("git_commit"):
        text += f" {toolkit['git_commit'][:12]}"
        if toolkit.get("git_dirty"):
            text += f" (dirty, diff {str(toolkit.get('git_diff_sha256'))[:8]})"
    if (data.get("job") or {}).get("cluster", {}).get("snapshot"):
        text += " snapshot"
    return text


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
    from .schedulers import get_backend

    return get_backend(rec.scheduler).cancel(rec)
