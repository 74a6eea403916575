"""What ``mimo-toolkit eval`` is asked to evaluate, checked before torch is imported.

A wrong run directory, a job without validation data or an ``--ablate`` that names no
encoder is a one-line user error in well under a second, not after loading torch and
megatron-core.
"""

from __future__ import annotations

from ...config import JobConfig
from ...errors import UserError
from ...resolve import load_manifest
from ...run_dir import RunDir


def eval_target(run_dir: str, data: str | None, ablate: str | None) -> tuple[RunDir, JobConfig]:
    """The run directory and its job, or a :class:`UserError` naming what is wrong."""
    rd = RunDir(run_dir)
    if not rd.job_file.exists():
        raise UserError(f"{run_dir}: not a run directory (no job.json)")
    job = load_manifest(rd.read_job()).config
    if data is None and (job.data.source != "llava" or not job.data.valid_path):
        raise UserError(f"{run_dir}: the job has no data.valid_path (it trained on {job.data.source} data); pass --data PATH")
    if ablate is not None and ablate not in job.encoders:
        raise UserError(f"--ablate {ablate}: not an encoder of this job ({', '.join(job.encoders)})")
    return rd, job
