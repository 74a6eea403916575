"""``--scheduler slurm``: ``sbatch --parsable RUN_DIR/launch/job.sbatch``.

The batch script (``templates/slurm.sbatch.j2``) runs one torchrun per node, forwards the
preemption signal and requeues; this backend renders it, submits it, and asks ``squeue``
(queued or running jobs) and ``sacct`` (ended ones) for job states.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from ..errors import UserError
from ..render import context, render_template
from ..run_dir import LAUNCH_DIR, RunDir
from ..torchrun import ShellExpr, torchrun_args, train_args
from .base import Backend, Echo, LaunchRequest, Submission, write_files

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs import JobRecord
    from ..resolve import ResolvedJob

SBATCH_SCRIPT = f"{LAUNCH_DIR}/job.sbatch"
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "UNKNOWN"}
)


class SlurmBackend(Backend):
    name = "slurm"
    active_states = ACTIVE_STATES

    def materialize(self, resolved: "ResolvedJob", run_dir, template_dir=None) -> LaunchRequest:
        files = self.base_files(resolved)
        ctx = context(resolved, run_dir)
        ctx.update(slurm_context(resolved))
        files[SBATCH_SCRIPT] = render_template("slurm.sbatch.j2", ctx, template_dir)
        rd = RunDir(run_dir)
        return LaunchRequest(self.name, rd.path, files, ["sbatch", "--parsable", str(rd.path / SBATCH_SCRIPT)])

    def submit(self, request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False,
               echo: Echo = print) -> Submission:
        if shutil.which(request.command[0]) is None:
            raise UserError("sbatch not found on PATH; run on a Slurm login node, or use --dry-run or render")
        write_files(request, resolved, force=force)
        proc = subprocess.run(request.command, capture_output=True, text=True)
        if proc.returncode:
            message = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            raise UserError(f"sbatch rejected {request.command[-1]}: {message}")
        job_id = proc.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"
        self.register(resolved, job_id, request.run_dir)
        return Submission(job_id, summary=f"submitted Slurm job {job_id}; run dir {request.run_dir}")

    def states(self, records: list["JobRecord"]) -> dict[str, str]:
        return slurm_states([r.job_id for r in records])

    def cancel(self, record: "JobRecord") -> str:
        if shutil.which("scancel") is None:
            raise UserError("scancel not found on PATH: run this on a Slurm login node")
        proc = subprocess.run(["scancel", record.job_id], capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"scancel {record.job_id} failed: {proc.stderr.strip()}")
        return f"cancelled Slurm job {record.job_id}"


def slurm_context(resolved: "ResolvedJob") -> dict:
    """Template variables of slurm.sbatch.j2 only (templates/README.md)."""
    return {"torchrun": sbatch_torchrun(resolved)}


def sbatch_torchrun(resolved: "ResolvedJob") -> list[str]:
    """torchrun as the batch script runs it on every node: node count, head address, port
    and paths from the script's own variables (``$SLURM_NNODES``, ``$HEAD_ADDR:$PORT``, ...)."""
    return torchrun_args(
        python=resolved.config.cluster.python,
        nnodes=ShellExpr('"$SLURM_NNODES"'),
        nproc_per_node=resolved.procs_per_node,
        rdzv_endpoint=ShellExpr('"$HEAD_ADDR:$PORT"'),
        rdzv_id=ShellExpr('"$SLURM_JOB_ID"'),
        module_args=train_args(ShellExpr('"$JOB_FILE"'), ShellExpr('"$RUN_DIR"')),
    )


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

