"""The shared flow behind ``render`` and ``submit``: pick the backend, materialize once,
then write (render) or write and run (submit).

Every scheduler-specific step lives in :mod:`mimo_toolkit.schedulers`; this module does not
know their names. Rendering is pure (:func:`materialize` writes nothing), so a dry run shows
exactly what a submit writes and runs. Every file lives in the run directory described by
:class:`mimo_toolkit.run_dir.RunDir`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .run_dir import RunDir
from .schedulers import get_backend
from .schedulers.base import Echo, LaunchRequest, Submission, SweepRequest, manifest_text, write_files

if TYPE_CHECKING:  # pragma: no cover
    from .resolve import ResolvedJob
    from .sweep import Element

__all__ = ["default_run_dir", "manifest_text", "materialize", "materialize_sweep", "render_job", "write_job", "submit",
           "submit_sweep", "RunDir"]


def default_run_dir(job_name: str) -> Path:
    """``./runs/<job_name>-<YYYYmmdd-HHMMSS>`` (the job name made safe for a directory name)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", job_name).strip("._") or "job"
    return Path.cwd() / "runs" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def materialize(
    resolved: "ResolvedJob", scheduler: str, run_dir: str | os.PathLike, template_dir: str | os.PathLike | None = None
) -> LaunchRequest:
    """The files and the command of a job on ``scheduler`` (pure: writes and runs nothing)."""
    return get_backend(scheduler).materialize(resolved, run_dir, template_dir)


def render_job(
    resolved: "ResolvedJob", scheduler: str, run_dir: str | os.PathLike, template_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """The files of a job, ``{path relative to run_dir: text}``; writes nothing."""
    return materialize(resolved, scheduler, run_dir, template_dir).files


def write_job(
    resolved: "ResolvedJob",
    scheduler: str,
    run_dir: str | os.PathLike,
    template_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> list[Path]:
    """Render, then write the files (scripts executable) and ``logs/``; returns their paths.
    A run directory holding another config's job.json is refused unless ``force``."""
    return write_files(materialize(resolved, scheduler, run_dir, template_dir), resolved, force=force)


def materialize_sweep(
    elements: list["Element"],
    scheduler: str,
    run_dir: str | os.PathLike,
    template_dir: str | os.PathLike | None = None,
    throttle: int | None = None,
) -> SweepRequest:
    """Every element's files and the command that starts them (pure)."""
    return get_backend(scheduler).materialize_sweep(elements, run_dir, template_dir, throttle)


def submit_sweep(request: SweepRequest, *, force: bool = False, echo: Echo = print) -> Submission:
    return get_backend(request.scheduler).submit_sweep(request, force=force, echo=echo)


def submit(request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False, echo: Echo = print) -> Submission:
    """Write the request's files and run its command (the backend that materialized it)."""
    return get_backend(request.scheduler).submit(request, resolved, force=force, echo=echo)
