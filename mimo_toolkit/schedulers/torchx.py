"""``--scheduler torchx``: ``bash RUN_DIR/launch/torchx.sh`` runs ``torchx run -s
SCHEDULER mimo.train ...`` with the options in ``RUN_DIR/launch/.torchxconfig``.

``cluster.torchx_scheduler`` picks TorchX's scheduler; what each one can carry is decided in
one place, :data:`SCHEDULER_OPTIONS` (the Kubernetes scheduler goes there too). Job states
and cancelling go through TorchX's own runner with the app handle ``torchx run`` printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import UserError
from ..render import CONTROL_CHARS, context, launch_env, render_template
from ..run_dir import LAUNCH_DIR, RunDir
from .base import Backend, Echo, LaunchRequest, Submission, write_files
from .slurm import slurm_dependency

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs import JobRecord
    from ..resolve import ResolvedJob

TORCHX_SCRIPT = f"{LAUNCH_DIR}/torchx.sh"
TORCHX_CONFIG = f"{LAUNCH_DIR}/.torchxconfig"
#: The TorchX component (the ``torchx.components`` entry point ``mimo`` in pyproject.toml).
COMPONENT = "mimo.train"
#: TorchX AppState names (``torchx status``) in which a job may still write logs.
ACTIVE_STATES = frozenset({"UNSUBMITTED", "SUBMITTED", "PENDING", "RUNNING", "UNKNOWN"})


class TorchxBackend(Backend):
    name = "torchx"
    active_states = ACTIVE_STATES

    def materialize(self, resolved: "ResolvedJob", run_dir, template_dir=None) -> LaunchRequest:
        files = self.base_files(resolved)
        rd = RunDir(run_dir)
        ctx = context(resolved, run_dir)
        ctx.update(torchx_context(resolved, rd))
        files[TORCHX_SCRIPT] = render_template("torchx.sh.j2", ctx, template_dir)
        files[TORCHX_CONFIG] = render_template("torchxconfig.j2", ctx, template_dir)
        return self.request(resolved, rd.path, files, ["bash", str(rd.path / TORCHX_SCRIPT)], env=_torchx_path())

    def submit(self, request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False,
               echo: Echo = print) -> Submission:
        env = {**os.environ, **request.env}
        if shutil.which("torchx", path=env["PATH"]) is None:
            raise UserError("torchx not found on PATH; install torchx>=0.7 in this environment")
        write_files(request, resolved, force=force)
        proc = subprocess.run(request.command, env=env, stdout=subprocess.PIPE, text=True)
        echo(proc.stdout.rstrip("\n"))  # TorchX prints the app handle
        script = request.command[-1]
        if proc.returncode:
            raise UserError(f"{script} failed with exit code {proc.returncode} (TorchX's message is above)")
        handles = re.findall(r"^\w+://\S+", proc.stdout, flags=re.MULTILINE)
        handle = handles[-1] if handles else script
        self.register(resolved, handle, request.run_dir)
        return Submission(handle, summary=f"submitted TorchX app {handle}; run dir {request.run_dir}")

    def states(self, records: list["JobRecord"]) -> dict[str, str]:
        from torchx.runner import get_runner

        out = {}
        with get_runner() as runner:
            for rec in records:
                if "://" not in rec.job_id:
                    continue
                try:
                    status = runner.status(rec.job_id)
                except Exception:  # noqa: BLE001 - a scheduler that cannot answer: the run dir decides
                    continue
                if status is not None:
                    out[rec.job_id] = status.state.name
        return out

    def cancel(self, record: "JobRecord") -> str:
        from torchx.runner import get_runner

        if "://" not in record.job_id:
            raise UserError(f"job {record.job_id}: TorchX printed no app handle for it; cancel it with its scheduler")
        with get_runner() as runner:
            runner.cancel(record.job_id)
        return f"cancelled TorchX app {record.job_id}"

    def runs_here(self, resolved: "ResolvedJob") -> bool:
        return resolved.config.cluster.torchx_scheduler == "local_cwd"


def _torchx_path() -> dict[str, str]:
    """torchx.sh calls `torchx`: when it is not on PATH but installed beside this Python (a
    venv that is not activated), that directory is put first."""
    path = os.environ.get("PATH", "")
    if shutil.which("torchx", path=path):
        return {}
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), path])}


# ---- what each TorchX scheduler can carry --------------------------------------------------


def _slurm_options(resolved: "ResolvedJob", rd: RunDir) -> tuple[dict[str, str], dict[str, str]]:
    """(.torchxconfig options, sbatch input variables) for TorchX 0.7's slurm scheduler."""
    cfg = resolved.config
    cluster = cfg.cluster
    if cluster.container_image:
        raise UserError("cluster.container_image: TorchX 0.7's slurm scheduler cannot set it; use --scheduler slurm")
    options = {k: getattr(cluster, k) for k in ("partition", "time", "constraint") if getattr(cluster, k)}
    options["comment"] = f"mimo-toolkit {cfg.recipe}/{cfg.preset} config {cfg.config_hash()}"
    # sbatch reads these input variables; TorchX 0.7 has no options for them.
    sbatch_env = {f"SBATCH_{k.upper()}": getattr(cluster, k) for k in ("account", "qos", "reservation")
                  if getattr(cluster, k)}
    if cluster.exclusive:
        sbatch_env["SBATCH_EXCLUSIVE"] = "exclusive"
    dependency = slurm_dependency(cluster)
    if dependency:
        sbatch_env["SBATCH_DEPENDENCY"] = dependency
    return options, sbatch_env


def _kubernetes_options(resolved: "ResolvedJob", rd: RunDir) -> tuple[dict[str, str], dict[str, str]]:
    """TorchX's kubernetes scheduler: a Volcano job in a queue and namespace."""
    cluster = resolved.config.cluster
    return {"queue": cluster.kubernetes_queue, "namespace": cluster.kubernetes_namespace}, {}


def _local_cwd_options(resolved: "ResolvedJob", rd: RunDir) -> tuple[dict[str, str], dict[str, str]]:
    return {"log_dir": str(rd.log_dir / "torchx")}, {}


#: TorchX scheduler -> its options for a job; a scheduler not here gets none.
SCHEDULER_OPTIONS: dict[str, Callable[["ResolvedJob", RunDir], tuple[dict[str, str], dict[str, str]]]] = {
    "slurm": _slurm_options,
    "local_cwd": _local_cwd_options,
    "kubernetes": _kubernetes_options,
}
#: TorchX schedulers that run a container image (``cluster.image``, ``cluster.torchx_mounts``).
CONTAINER_SCHEDULERS = ("kubernetes", "kubernetes_mcad", "docker", "aws_batch", "gcp_batch")


def torchx_context(resolved: "ResolvedJob", rd: RunDir) -> dict:
    """Template variables of torchx.sh and .torchxconfig: the component's arguments and
    the scheduler options TorchX 0.7 understands."""
    cfg = resolved.config
    cluster = cfg.cluster
    scheduler = cluster.torchx_scheduler
    env = launch_env(resolved, rd.path)
    for name, value in env.items():
        _check_torchx_env(name, value, scheduler == "slurm")
    args: list[tuple[str, str]] = [
        ("--config", str(rd.job_file)),
        ("--run_dir", str(rd.path)),
        ("--nnodes", str(resolved.nodes)),
        ("--nproc_per_node", str(resolved.procs_per_node)),
        ("--gpus_per_node", str(cluster.gpus_per_node)),
    ]
    if cluster.cpus_per_task:
        args.append(("--cpu", str(cluster.cpus_per_task)))
    mem_mb = _mem_mb(cluster.mem)
    if mem_mb:
        args.append(("--memMB", str(mem_mb)))
    args += [("--name", cfg.job_name), ("--python", cluster.python), ("--max_retries", str(cluster.max_restarts))]
    if env:
        args.append(("--env", ",".join(f"{k}={v}" for k, v in env.items())))
    args += _container_args(cluster, scheduler)
    _check_one_role(resolved)
    options_of = SCHEDULER_OPTIONS.get(scheduler)
    if scheduler != "slurm" and (cluster.after or cluster.dependency):
        key = "after" if cluster.after else "dependency"
        raise UserError(f"cluster.{key}: TorchX's {scheduler} scheduler has no job dependencies; use --scheduler slurm")
    options, sbatch_env = options_of(resolved, rd) if options_of else ({}, {})
    return {
        "torchx_scheduler": scheduler,
        "torchx_config_file": str(rd.path / TORCHX_CONFIG),
        "torchx_run": ["torchx", "run", "-s", scheduler, COMPONENT],
        "component_args": args,
        "torchx_options": options,
        "sbatch_env": sbatch_env,
    }


def _container_args(cluster, scheduler: str) -> list[tuple[str, str]]:
    """``--image`` and ``--mounts`` for a container scheduler (the image is required there);
    refused elsewhere, where they would mean nothing."""
    if scheduler not in CONTAINER_SCHEDULERS:
        for key in ("image", "torchx_mounts"):
            if getattr(cluster, key):
                raise UserError(f"cluster.{key}: TorchX's {scheduler} scheduler runs no container image")
        return []
    if not cluster.image:
        raise UserError(f"cluster.image: TorchX's {scheduler} scheduler runs a container image; "
                        "set --set cluster.image=IMAGE (with mimo-toolkit, torch and megatron-core installed)")
    args = [("--image", cluster.image)]
    if cluster.torchx_mounts:
        args.append(("--mounts", ",".join(cluster.torchx_mounts)))
    return args


def _check_one_role(resolved: "ResolvedJob") -> None:
    """The component is one role: the same torchrun on every node, no Slurm flags."""
    cluster = resolved.config.cluster
    if cluster.hetjob:
        raise UserError("cluster.hetjob: TorchX's component runs one role on every node; use --scheduler slurm")
    if len(set(resolved.node_procs)) > 1:
        raise UserError(
            f"cluster.allow_partial_nodes: this layout runs {resolved.node_procs} processes per node; TorchX's "
            "component runs the same number on every node; use --scheduler slurm"
        )
    for key in ("sbatch_extra", "srun_extra"):
        if getattr(cluster, key):
            raise UserError(f"cluster.{key}: TorchX's schedulers take no raw Slurm flags; use --scheduler slurm")


def _check_torchx_env(name: str, value: str, on_slurm: bool) -> None:
    """``torchx run --env K=V,K=V`` splits on '=' and strips; srun --export splits on ','."""
    bad = (
        "=" in value
        or value != value.strip()
        or value in ("", "''", '""')
        or CONTROL_CHARS.search(value)
        or (on_slurm and "," in value)
    )
    if bad:
        limits = "'='" + (", ','" if on_slurm else "") + ", control characters, outer spaces or an empty value"
        raise UserError(
            f"env {name}={value!r}: TorchX's --env K=V,... cannot carry {limits}; use --scheduler slurm"
        )


def _mem_mb(mem: str | None) -> int:
    """Slurm's --mem (default unit M) in MB; 0 for unset or '0' (TorchX then asks for none)."""
    if not mem:
        return 0
    match = re.fullmatch(r"(\d+)([KMGT]?)", mem.strip(), re.IGNORECASE)
    if not match:
        raise UserError(f"cluster.mem={mem!r}: expected a size such as 0, 64000, 500G or 1T")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2).upper()]
    return max(1, int(int(match.group(1)) * scale)) if int(match.group(1)) else 0
