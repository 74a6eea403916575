"""The one interface every scheduler backend implements.

Modelled on TorchX's ``schedulers/api.py``: :meth:`Backend.materialize` is pure (it renders
the launch files and names the command, like ``submit_dryrun``), :meth:`Backend.submit`
writes those files and runs that command (like ``schedule``), so ``submit --dry-run`` prints
exactly what a submit runs. The job registry asks the backend of each job for its state and
to cancel it; logs live in the run directory for every backend.

Pure Python: a backend imports its client library (torchx) only inside its methods.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import UserError
from ..render import shquote
from ..run_dir import JOB_FILE, RunDir

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs import JobRecord
    from ..resolve import ResolvedJob
    from ..sweep import Element

Echo = Callable[[str], None]

# Exit codes of `mimo-toolkit submit` for a job it waited for (documented in docs/cli.md).
EXIT_OK = 0
#: The job failed (a rank raised, was killed, or the job refused its config or data).
EXIT_FAILED = 1
#: The job was cancelled (`mimo-toolkit cancel`, scancel, the scheduler).
EXIT_CANCELLED = 3
#: The job saved a checkpoint after a preemption signal and stopped (EX_TEMPFAIL: rerun
#: the same run directory to resume).
EXIT_PREEMPTED = 75


def manifest_text(resolved: "ResolvedJob") -> str:
    """``job.json``: the resolved config the job reads, and where its code came from
    (``provenance``: version, git commit, dirty flag, diff hash of toolkit and recipe)."""
    from ..provenance import provenance

    manifest = {**resolved.manifest(), "provenance": provenance(resolved.recipe_file)}
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


@dataclass
class LaunchRequest:
    """What a submit writes and runs (TorchX's AppDryRunInfo): built once, printed by a dry
    run, executed by :meth:`Backend.submit`."""

    scheduler: str
    run_dir: Path
    files: dict[str, str]
    """Files to write, ``{path relative to run_dir: text}``; ``job.json`` first."""
    command: list[str]
    """The command submit runs (its words)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment the command gets on top of the caller's (shown by a dry run)."""
    native: object = None
    """The scheduler library's own request, where the backend hands it to that library."""
    snapshot: str | None = None
    """With ``cluster.snapshot``: the recipe file copied into RUN_DIR/snapshot with the toolkit."""
    array_id: str | None = None
    """The sweep this job belongs to (the registry groups its elements under this id)."""

    def describe(self) -> str:
        """The exact files and command, as a dry run prints them."""
        out = []
        for rel, text in self.files.items():
            path = self.run_dir / rel
            if rel == JOB_FILE:
                out.append(f"# ---- {path} ({len(text)} bytes; `mimo-toolkit show --config` prints it)\n")
            else:
                out.append(f"# ---- {path}\n{text}")
        if self.snapshot is not None:
            from ..provenance import PACKAGE_DIR, snapshot_dir

            out.append(f"# ---- {snapshot_dir(self.run_dir)}: a copy of {PACKAGE_DIR}"
                       + (f" and {self.snapshot}" if self.snapshot else "") + "\n")
        words = [f"{k}={shquote(v)}" for k, v in self.env.items()] + [shquote(w) for w in self.command]
        out.append("# ---- command\n" + (" ".join(["env", *words]) if self.env else " ".join(words)) + "\n")
        return "\n".join(out)


@dataclass
class SweepRequest:
    """A sweep: every element's own request, and for a backend with job arrays the one
    array request that starts them all."""

    scheduler: str
    run_dir: Path
    elements: list["Element"]
    parts: list[LaunchRequest]
    array: LaunchRequest | None = None

    def describe(self) -> str:
        out = [f"# ==== sweep element {i}: {' '.join(e.sets)} ({e.name})\n" + part.describe()
               for i, (e, part) in enumerate(zip(self.elements, self.parts))]
        if self.array is not None:
            out.append("# ==== the job array\n" + self.array.describe())
        return "\n".join(out)


@dataclass
class Submission:
    """What a submit started: the job id the registry keeps and, for a backend that waits
    for its job, how the job ended."""

    job_id: str
    exit_code: int = EXIT_OK
    """The exit code `mimo-toolkit submit` ends with."""
    summary: str = ""
    """One line for the user (stderr)."""


class Backend(ABC):
    """One scheduler: render (pure), submit, state, cancel."""

    #: The `--scheduler` name.
    name: str = ""
    #: Scheduler states in which a job may still write logs (``logs --follow`` waits).
    active_states: frozenset[str] = frozenset({"PENDING", "RUNNING", "UNKNOWN"})

    @abstractmethod
    def materialize(
        self, resolved: "ResolvedJob", run_dir: str | os.PathLike, template_dir: str | os.PathLike | None = None
    ) -> LaunchRequest:
        """Render the files and name the command; writes nothing, runs nothing."""

    @abstractmethod
    def submit(self, request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False,
               echo: Echo = print) -> Submission:
        """Write the request's files, run its command, register the job."""

    def materialize_sweep(self, elements: list["Element"], run_dir: str | os.PathLike,
                          template_dir: str | os.PathLike | None = None, throttle: int | None = None) -> SweepRequest:
        """Every element's request (pure). A backend without job arrays refuses sweeps."""
        raise UserError(f"--sweep: --scheduler {self.name} has no job arrays; use --scheduler slurm "
                        "(one job array) or local (one element after another)")

    def submit_sweep(self, request: SweepRequest, *, force: bool = False, echo: Echo = print) -> Submission:
        raise NotImplementedError  # pragma: no cover - materialize_sweep refused already

    def states(self, records: list["JobRecord"]) -> dict[str, str]:
        """The scheduler's state of each job, by job id (those it does not know are left out)."""
        return {}

    def runs_here(self, resolved: "ResolvedJob") -> bool:
        """Whether the job's ranks run on this machine (so its data files must be here)."""
        return False

    def cancel(self, record: "JobRecord") -> str:
        raise UserError(f"job {record.job_id}: --scheduler {record.scheduler} jobs cannot be cancelled from here")

    # ---- shared steps ------------------------------------------------------------------
    def request(self, resolved: "ResolvedJob", run_dir: str | os.PathLike, files: dict[str, str],
                command: list[str], **kw) -> LaunchRequest:
        """A request of this backend (with the snapshot to copy, when the config asks)."""
        snapshot = (resolved.recipe_file or "") if resolved.config.cluster.snapshot else None
        return LaunchRequest(self.name, RunDir(run_dir).path, files, command, snapshot=snapshot, **kw)

    def base_files(self, resolved: "ResolvedJob") -> dict[str, str]:
        """Files every backend writes: ``job.json``."""
        for mount in resolved.config.cluster.container_mounts:
            if "," in mount:
                raise UserError(f"cluster.container_mounts entry {mount!r}: pyxis splits mounts on commas")
        return {JOB_FILE: manifest_text(resolved)}

    def register(self, resolved: "ResolvedJob", job_id: str, run_dir: str | os.PathLike,
                 array_id: str | None = None) -> None:
        """Remember the job for `mimo-toolkit list/status/logs/cancel`."""
        from ..jobs import JobRecord, record_submission

        cfg = resolved.config
        record_submission(JobRecord(job_id, self.name, str(RunDir(run_dir).path), cfg.job_name, cfg.recipe,
                                    cfg.preset, time.time(), array_id))


def write_files(request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False) -> list[Path]:
    """Write a request's files (scripts executable) and ``logs/``; returns their paths.

    Refuses a run directory whose checkpoint (or job.json) this config should not continue:
    another model always, other changed settings unless ``force`` (``checkpoints.check_run_dir``).
    """
    rd = RunDir(request.run_dir)
    _check_run_dir(rd, resolved, force)
    rd.log_dir.mkdir(parents=True, exist_ok=True)  # Slurm will not create --output's directory
    paths = []
    for rel, text in request.files.items():
        path = rd.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel.endswith((".sh", ".sbatch")):
            path.chmod(0o755)
        paths.append(path)
    if request.snapshot is not None:
        from ..provenance import write_snapshot

        paths.append(write_snapshot(rd.path, request.snapshot or None))
    return paths


def _check_run_dir(rd: RunDir, resolved: "ResolvedJob", force: bool) -> None:
    """The resume guard (``mimo_toolkit.checkpoints``): a run directory's checkpoint (or job.json)
    may be continued by a config that differs only in what a checkpoint survives."""
    from ..checkpoints import check_run_dir

    check_run_dir(rd, resolved.config.to_dict(), force)


def exit_code_of_run(rd: RunDir, state: str) -> int:
    """The submit exit code for a job that ended in scheduler ``state`` (SUCCEEDED/COMPLETED,
    FAILED, CANCELLED, ...), refined by the run's own exit_status.json."""
    reason = (rd.read_exit_status() or {}).get("reason")
    if state.startswith("CANCELLED"):
        return EXIT_CANCELLED
    if state in ("SUCCEEDED", "COMPLETED") or reason == "completed":
        return EXIT_OK  # a completed run whose shutdown was signalled still completed
    if reason == "preempted":
        return EXIT_PREEMPTED
    return EXIT_FAILED
