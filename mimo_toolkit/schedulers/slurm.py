"""``--scheduler slurm``: ``sbatch --parsable RUN_DIR/launch/job.sbatch``.

The batch script (``templates/slurm.sbatch.j2``) runs one torchrun per node, forwards the
preemption signal and requeues; this backend renders it, submits it, and asks ``squeue``
(queued or running jobs) and ``sacct`` (ended ones) for job states.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import SlurmGroup
from ..errors import UserError
from ..render import context, render_template
from ..run_dir import LAUNCH_DIR, RunDir
from ..torchrun import ShellExpr, torchrun_args, train_args
from ..validation import check_slurm_launch
from .base import Backend, Echo, LaunchRequest, Submission, SweepRequest, write_files

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs import JobRecord
    from ..resolve import ResolvedJob
    from ..sweep import Element

SBATCH_SCRIPT = f"{LAUNCH_DIR}/job.sbatch"
#: A sweep's job array script, in the sweep's own run directory.
ARRAY_SCRIPT = f"{LAUNCH_DIR}/array.sbatch"
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "UNKNOWN"}
)


class SlurmBackend(Backend):
    name = "slurm"
    active_states = ACTIVE_STATES

    def materialize(self, resolved: "ResolvedJob", run_dir, template_dir=None) -> LaunchRequest:
        check_slurm_launch(resolved.config)
        files = self.base_files(resolved)
        ctx = context(resolved, run_dir)
        ctx.update(slurm_context(resolved))
        files[SBATCH_SCRIPT] = render_template("slurm.sbatch.j2", ctx, template_dir)
        rd = RunDir(run_dir)
        return self.request(resolved, rd.path, files, ["sbatch", "--parsable", str(rd.path / SBATCH_SCRIPT)])

    def submit(self, request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False,
               echo: Echo = print) -> Submission:
        if shutil.which(request.command[0]) is None:
            raise UserError("sbatch not found on PATH; run on a Slurm login node, or use --dry-run or render")
        write_files(request, resolved, force=force)
        job_id = _sbatch(request.command)
        self.register(resolved, job_id, request.run_dir)
        return Submission(job_id, summary=f"submitted Slurm job {job_id}; run dir {request.run_dir}")

    def materialize_sweep(self, elements: list["Element"], run_dir, template_dir=None,
                          throttle: int | None = None) -> SweepRequest:
        """Each element's files in ``RUN_DIR/<element>/`` and ONE array script,
        ``RUN_DIR/launch/array.sbatch``: the elements' shared #SBATCH header plus
        ``--array=0-N[%throttle]``; task i execs element i's own batch script."""
        rd = RunDir(run_dir)
        parts = [self.materialize(e.resolved, rd.path / e.name, template_dir) for e in elements]
        first = elements[0].resolved
        header = _directives(first, rd.path / elements[0].name, template_dir)
        for e in elements[1:]:
            if _directives(e.resolved, rd.path / elements[0].name, template_dir) != header:
                raise UserError(
                    f"--sweep element {', '.join(e.sets)}: its Slurm resources differ from those of "
                    f"{', '.join(elements[0].sets)}; a job array shares one #SBATCH header (sweep settings inside the job)"
                )
        if throttle is not None and throttle < 1:
            raise UserError(f"--sweep-throttle {throttle}: must be >= 1")
        ctx = context(first, rd.path)
        ctx.update(slurm_context(first))
        ctx.update(array=f"0-{len(elements) - 1}" + (f"%{throttle}" if throttle else ""), log_job_pattern="%A_%a",
                   elements=[{"name": e.name, "run_dir": str(rd.path / e.name)} for e in elements])
        script = render_template("slurm_array.sbatch.j2", ctx, template_dir)
        array = LaunchRequest(self.name, rd.path, {ARRAY_SCRIPT: script},
                              ["sbatch", "--parsable", str(rd.path / ARRAY_SCRIPT)])
        return SweepRequest(self.name, rd.path, list(elements), parts, array)

    def submit_sweep(self, request: SweepRequest, *, force: bool = False, echo: Echo = print) -> Submission:
        if shutil.which("sbatch") is None:
            raise UserError("sbatch not found on PATH; run on a Slurm login node, or use --dry-run or render")
        for element, part in zip(request.elements, request.parts):
            write_files(part, element.resolved, force=force)
        assert request.array is not None
        write_files(request.array, request.elements[0].resolved, force=True)  # no job.json of its own
        array_id = _sbatch(request.array.command)
        for i, (element, part) in enumerate(zip(request.elements, request.parts)):
            self.register(element.resolved, f"{array_id}_{i}", part.run_dir, array_id=array_id)
        return Submission(array_id, summary=f"submitted Slurm job array {array_id} of {len(request.parts)} "
                                            f"element(s); run dirs in {request.run_dir}")

    def states(self, records: list["JobRecord"]) -> dict[str, str]:
        return slurm_states([r.job_id for r in records])

    def cancel(self, record: "JobRecord") -> str:
        if shutil.which("scancel") is None:
            raise UserError("scancel not found on PATH: run this on a Slurm login node")
        proc = subprocess.run(["scancel", record.job_id], capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"scancel {record.job_id} failed: {proc.stderr.strip()}")
        return f"cancelled Slurm job {record.job_id}"


@dataclass
class Component:
    """The nodes of one Slurm job component: the whole job, or in a heterogeneous job
    (``cluster.hetjob``) one module's nodes with that module's resources."""

    nodes: int
    modules: list[str]
    partition: str | None
    gpus_per_node: int
    constraint: str | None


def slurm_context(resolved: "ResolvedJob") -> dict:
    """Template variables of slurm.sbatch.j2 only (templates/README.md)."""
    cluster = resolved.config.cluster
    components = hetjob_components(resolved) if cluster.hetjob else [
        Component(resolved.nodes, list(resolved.config.model), cluster.partition, cluster.gpus_per_node,
                  cluster.constraint)
    ]
    placed = cluster.hetjob or len(set(resolved.node_procs)) > 1
    return {
        "components": components,
        "hetjob": cluster.hetjob,
        "dependency": slurm_dependency(cluster),
        "node_procs": resolved.node_procs,
        "srun_prefix": _placement_prefix(resolved) if placed else [],
        "torchrun": sbatch_torchrun(resolved, placed),
        "array": None,
        "log_job_pattern": "%j",
    }


def hetjob_components(resolved: "ResolvedJob") -> list[Component]:
    """One component per run of nodes holding the same module, in node order; a node that
    holds ranks of two modules cannot belong to either module's component."""
    cfg = resolved.config
    node_modules: dict[int, set[str]] = {}
    for info in resolved.rank_map:
        node_modules.setdefault(info.node, set()).update(info.modules)
    components: list[Component] = []
    for node in sorted(node_modules):
        names = sorted(node_modules[node])
        if len(names) != 1:
            raise UserError(
                f"cluster.hetjob: node {node} holds ranks of {' and '.join(names)}; a heterogeneous job gives "
                f"each module whole nodes (align each module's ranks to cluster.procs_per_node="
                f"{resolved.procs_per_node})"
            )
        (module,) = names
        if components and components[-1].modules == [module]:
            components[-1].nodes += 1
            continue
        group = cfg.cluster.groups.get(module) or SlurmGroup()
        gpus = cfg.cluster.gpus_per_node if group.gpus_per_node is None else group.gpus_per_node
        if gpus and resolved.procs_per_node > gpus:
            raise UserError(
                f"cluster.groups.{module}.gpus_per_node={gpus} is fewer than cluster.procs_per_node="
                f"{resolved.procs_per_node} (one process per GPU)"
            )
        components.append(Component(1, [module], group.partition or cfg.cluster.partition, gpus,
                                    group.constraint or cfg.cluster.constraint))
    return components


def slurm_dependency(cluster) -> str | None:
    """``--dependency``: the typed ``cluster.after`` (JOBID[:TYPE] -> TYPE:JOBID) or the raw
    ``cluster.dependency``."""
    if cluster.after:
        job, _, kind = cluster.after.partition(":")
        return f"{kind or 'afterok'}:{job}"
    return cluster.dependency


def _placement_prefix(resolved: "ResolvedJob") -> list[str]:
    """Words before torchrun when nodes differ (a hetjob's components, a partial last node):
    each node's task takes its node rank from Slurm and its process count from the list, and
    torchrun reads both from its PET_* variables. Ranks then follow the node order, so each
    module's ranks land on its own component's nodes."""
    procs = " ".join(str(n) for n in resolved.node_procs)
    script = (f"PROCS=({procs}); export PET_NODE_RANK=$SLURM_NODEID "
              f"PET_NPROC_PER_NODE=${{PROCS[$SLURM_NODEID]}}; exec \"$@\"")
    return ["bash", "-c", script, "mimo-node"]


def sbatch_torchrun(resolved: "ResolvedJob", placed: bool = False) -> list[str]:
    """torchrun as the batch script runs it on every node: node count, head address, port
    and paths from the script's own variables (``$SLURM_NNODES``, ``$HEAD_ADDR:$PORT``, ...).
    ``placed``: a static rendezvous in node order, the process count from the environment
    (:func:`_placement_prefix`)."""
    return torchrun_args(
        python=resolved.config.cluster.python,
        nnodes=resolved.nodes if placed else ShellExpr('"$SLURM_NNODES"'),
        nproc_per_node=None if placed else resolved.procs_per_node,
        rdzv_backend="static" if placed else "c10d",
        rdzv_endpoint=ShellExpr('"$HEAD_ADDR:$PORT"'),
        rdzv_id=ShellExpr('"$SLURM_JOB_ID"'),
        module_args=train_args(ShellExpr('"$JOB_FILE"'), ShellExpr('"$RUN_DIR"')),
    )


def _sbatch(command: list[str]) -> str:
    """Run ``sbatch --parsable SCRIPT``; the job id (a rejection is a one-line UserError)."""
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        message = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
        raise UserError(f"sbatch rejected {command[-1]}: {message}")
    return proc.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"


def _directives(resolved: "ResolvedJob", run_dir, template_dir) -> str:
    """The #SBATCH header of a job (what an array's elements must share)."""
    ctx = context(resolved, run_dir)
    ctx.update(slurm_context(resolved))
    return render_template("slurm_directives.j2", ctx, template_dir)


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError):
        return ""


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Scheduler state of Slurm jobs: squeue while they are queued or running, sacct after.
    Array elements are ``ID_N`` (``squeue -r``: one line each); a heterogeneous job's state
    is that of its first component (``ID+0``)."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    for line in _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"]).splitlines():
        parts = line.split()
        if len(parts) == 2:
            states.setdefault(parts[0].split("+")[0], parts[1])
    missing = [j for j in job_ids if j not in states]
    if missing:
        for line in _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"]).splitlines():
            parts = line.split("|")
            if len(parts) == 2:  # "CANCELLED by 0" -> CANCELLED
                states.setdefault(parts[0].split("+")[0], parts[1].split()[0])
    return states
