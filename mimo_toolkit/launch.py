"""Render, write and submit a resolved job: the one library behind ``render`` and ``submit``.

Rendering is pure (:func:`render_job` returns ``{path relative to the run dir: text}``), so a
dry run shows exactly what a real submit would write and run, and writes nothing.
:func:`write_job` writes those files; :func:`submit` writes them and hands the job to the
scheduler:

* ``slurm``: ``sbatch --parsable RUN_DIR/launch/job.sbatch``; returns the job id.
* ``torchx``: runs ``RUN_DIR/launch/torchx.sh`` (``torchx run ... mimo.train ...``).
* ``local``: runs the :func:`mimo_toolkit.components.train` AppDef on TorchX's ``local_cwd``
  scheduler through TorchX's Python API, streams rank-prefixed logs and a progress bar.

Every file lives in the run directory described by :class:`mimo_toolkit.run_dir.RunDir`.
torchx (and subprocess) are imported only when a job is submitted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import UserError
from .render import CONTROL_CHARS, context, job_env, render_template, shquote
from .run_dir import JOB_FILE, LAUNCH_DIR, RunDir

if TYPE_CHECKING:  # pragma: no cover
    from .resolve import ResolvedJob

SCHEDULERS = ("slurm", "torchx", "local")
SBATCH_SCRIPT = f"{LAUNCH_DIR}/job.sbatch"
TORCHX_SCRIPT = f"{LAUNCH_DIR}/torchx.sh"
TORCHX_CONFIG = f"{LAUNCH_DIR}/.torchxconfig"
#: The TorchX component (the ``torchx.components`` entry point ``mimo`` in pyproject.toml).
COMPONENT = "mimo.train"

Echo = Callable[[str], None]


def default_run_dir(job_name: str) -> Path:
    """``./runs/<job_name>-<YYYYmmdd-HHMMSS>`` (the job name made safe for a directory name)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", job_name).strip("._") or "job"
    return Path.cwd() / "runs" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def manifest_text(resolved: "ResolvedJob") -> str:
    return json.dumps(resolved.manifest(), indent=2, sort_keys=True) + "\n"


# ---- rendering (pure) ---------------------------------------------------------------------


def render_job(
    resolved: "ResolvedJob", scheduler: str, run_dir: str | os.PathLike, template_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """The files of a job, ``{path relative to run_dir: text}``; writes nothing."""
    if scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    files = {JOB_FILE: manifest_text(resolved)}
    ctx = context(resolved, run_dir)
    for mount in resolved.config.cluster.container_mounts:
        if "," in mount:
            raise UserError(f"cluster.container_mounts entry {mount!r}: pyxis splits mounts on commas")
    if scheduler == "slurm":
        files[SBATCH_SCRIPT] = render_template("slurm.sbatch.j2", ctx, template_dir)
    elif scheduler == "torchx":
        ctx.update(torchx_context(resolved, RunDir(run_dir)))
        files[TORCHX_SCRIPT] = render_template("torchx.sh.j2", ctx, template_dir)
        files[TORCHX_CONFIG] = render_template("torchxconfig.j2", ctx, template_dir)
    return files


def torchx_context(resolved: "ResolvedJob", rd: RunDir) -> dict:
    """Template variables of torchx.sh and .torchxconfig: the component's arguments and
    the scheduler options TorchX 0.7 understands."""
    cfg = resolved.config
    cluster = cfg.cluster
    scheduler = cluster.torchx_scheduler
    on_slurm = scheduler == "slurm"
    for name in ("dependency", "container_image"):
        if on_slurm and getattr(cluster, name):
            raise UserError(
                f"cluster.{name}: TorchX 0.7's slurm scheduler cannot set it; use --scheduler slurm"
            )
    env = job_env(resolved)
    for name, value in env.items():
        _check_torchx_env(name, value, on_slurm)
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
    options: dict[str, str] = {}
    sbatch_env: dict[str, str] = {}
    if on_slurm:
        options = {k: getattr(cluster, k) for k in ("partition", "time", "constraint") if getattr(cluster, k)}
        options["comment"] = f"mimo-toolkit {cfg.recipe}/{cfg.preset} config {cfg.config_hash()}"
        # sbatch reads these input variables; TorchX 0.7 has no options for them.
        for key in ("account", "qos", "reservation"):
            if getattr(cluster, key):
                sbatch_env[f"SBATCH_{key.upper()}"] = getattr(cluster, key)
        if cluster.exclusive:
            sbatch_env["SBATCH_EXCLUSIVE"] = "exclusive"
    elif scheduler == "local_cwd":
        options = {"log_dir": str(rd.log_dir / "torchx")}
    return {
        "torchx_scheduler": scheduler,
        "torchx_config_file": str(rd.path / TORCHX_CONFIG),
        "torchx_run": ["torchx", "run", "-s", scheduler, COMPONENT],
        "component_args": args,
        "torchx_options": options,
        "sbatch_env": sbatch_env,
    }


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


# ---- writing ------------------------------------------------------------------------------


def write_job(
    resolved: "ResolvedJob",
    scheduler: str,
    run_dir: str | os.PathLike,
    template_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> list[Path]:
    """Render, then write the files (scripts executable) and ``logs/``; returns their paths.

    Refuses a run directory that holds another config's job.json (its checkpoints would be
    resumed by the wrong job) unless ``force``.
    """
    files = render_job(resolved, scheduler, run_dir, template_dir)
    rd = RunDir(run_dir)
    _check_run_dir(rd, resolved, force)
    rd.log_dir.mkdir(parents=True, exist_ok=True)  # Slurm will not create --output's directory
    paths = []
    for rel, text in files.items():
        path = rd.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel.endswith((".sh", ".sbatch")):
            path.chmod(0o755)
        paths.append(path)
    return paths


def _check_run_dir(rd: RunDir, resolved: "ResolvedJob", force: bool) -> None:
    if force or not rd.job_file.exists():
        return
    try:
        old = json.loads(rd.job_file.read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        old = None
    new = resolved.config.config_hash()
    if old != new:
        raise UserError(
            f"{rd.path} already holds a run of another config ({old}, this one is {new}); "
            "use another directory or --force"
        )


# ---- submitting ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What a submit writes and runs; a dry run prints it."""

    scheduler: str
    run_dir: Path
    files: dict[str, str]
    command: list[str]

    def describe(self) -> str:
        """The exact files and command, as a dry run prints them."""
        out = []
        for rel, text in self.files.items():
            path = self.run_dir / rel
            if rel == JOB_FILE:
                out.append(f"# ---- {path} ({len(text)} bytes; `mimo-toolkit show --config` prints it)\n")
            else:
                out.append(f"# ---- {path}\n{text}")
        out.append("# ---- command\n" + " ".join(shquote(word) for word in self.command) + "\n")
        return "\n".join(out)


def plan(
    resolved: "ResolvedJob",
    scheduler: str,
    run_dir: str | os.PathLike,
    template_dir: str | os.PathLike | None = None,
) -> Plan:
    """Render the job for ``scheduler`` and name the command a submit runs (pure)."""
    files = render_job(resolved, scheduler, run_dir, template_dir)
    rd = RunDir(run_dir)
    if scheduler == "slurm":
        command = ["sbatch", "--parsable", str(rd.path / SBATCH_SCRIPT)]
    elif scheduler == "torchx":
        command = ["bash", str(rd.path / TORCHX_SCRIPT)]
    else:
        from torchx.specs import macros

        from .components import train

        role = train(**local_component_args(resolved, rd)).roles[0]
        role = macros.Values(img_root="", app_id=macros.app_id, replica_id="0", rank0_env="TORCHX_RANK0_HOST").apply(role)
        command = ["env", *(f"{k}={v}" for k, v in role.env.items()), role.entrypoint, *role.args]
    return Plan(scheduler, rd.path, files, command)


def submit(
    resolved: "ResolvedJob",
    scheduler: str,
    run_dir: str | os.PathLike,
    template_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    echo: Echo = print,
) -> str:
    """Write the job and start it. Returns the Slurm job id, the torchx.sh that ran (TorchX
    printed the app handle), or the final state of a local run (``SUCCEEDED``, ...)."""
    import shutil
    import subprocess

    plan(resolved, scheduler, run_dir, template_dir)  # every check before anything is written
    if scheduler == "slurm":
        sbatch = shutil.which("sbatch")
        if sbatch is None:
            raise UserError("sbatch not found on PATH; run on a Slurm login node, or use --dry-run or render")
        write_job(resolved, scheduler, run_dir, template_dir, force=force)
        job_id = _sbatch(sbatch, RunDir(run_dir).path / SBATCH_SCRIPT)
        _register(resolved, "slurm", job_id, run_dir)
        return job_id
    if scheduler == "torchx":
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        if shutil.which("torchx", path=env["PATH"]) is None:
            raise UserError("torchx not found on PATH; install torchx>=0.7 in this environment")
        write_job(resolved, scheduler, run_dir, template_dir, force=force)
        script = RunDir(run_dir).path / TORCHX_SCRIPT
        proc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
        echo(proc.stdout.rstrip("\n"))  # TorchX prints the app handle
        if proc.returncode:
            raise UserError(f"{script} failed with exit code {proc.returncode} (TorchX's message is above)")
        handles = re.findall(r"^\w+://\S+", proc.stdout, flags=re.MULTILINE)
        _register(resolved, "torchx", handles[-1] if handles else str(script), run_dir)
        return str(script)
    write_job(resolved, scheduler, run_dir, template_dir, force=force)
    return run_local(resolved, RunDir(run_dir), echo)


def _register(resolved: "ResolvedJob", scheduler: str, job_id: str, run_dir) -> None:
    """Remember the job for `mimo-toolkit list/status/logs/cancel`."""
    from .jobs import JobRecord, record_submission

    cfg = resolved.config
    record_submission(
        JobRecord(job_id, scheduler, str(RunDir(run_dir).path), cfg.job_name, cfg.recipe, cfg.preset, time.time())
    )


def _sbatch(sbatch: str, script: Path) -> str:
    import subprocess

    proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode:
        message = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
        raise UserError(f"sbatch rejected {script}: {message}")
    return proc.stdout.strip().split(";")[0]


# ---- local runs ---------------------------------------------------------------------------


def local_component_args(resolved: "ResolvedJob", rd: RunDir) -> dict:
    """This machine runs every rank: one torchrun with world-size workers."""
    cfg = resolved.config
    return {
        "config": str(rd.job_file),
        "run_dir": str(rd.path),
        "nnodes": 1,
        "nproc_per_node": resolved.world_size,
        "name": cfg.job_name,
        "python": sys.executable,
        "env": job_env(resolved),
    }


def run_local(resolved: "ResolvedJob", rd: RunDir, echo: Echo = print) -> str:
    """Run the job on TorchX's local_cwd scheduler and wait; streams ``[rankN]`` log lines
    and a progress bar fed by rank 0's metrics.jsonl. Returns the final state's name."""
    import threading

    from torchx.runner import get_runner
    from torchx.schedulers.api import Stream

    from .components import train

    app = train(**local_component_args(resolved, rd))
    role = app.roles[0].name
    progress = _Progress(rd.metrics_file, resolved.config.train.steps, echo)
    with get_runner() as runner:
        handle = runner.run(app, scheduler="local_cwd", cfg={"log_dir": str(rd.log_dir / "torchx")})
        _register(resolved, "local", handle, rd.path)
        progress.say(f"started {handle}; run dir {rd.path}")

        def pump() -> None:
            try:
                for line in runner.log_lines(handle, role, 0, should_tail=True, streams=Stream.COMBINED):
                    text = line.rstrip("\n")
                    if text.strip():
                        progress.say(text if text.startswith("[rank") else f"[torchrun] {text}")
            except RuntimeError as exc:  # the app ended before writing a log
                progress.say(f"[torchrun] {exc}")

        pump_thread = threading.Thread(target=pump, daemon=True)
        pump_thread.start()
        try:
            while True:
                status = runner.status(handle)
                progress.update()
                if status is None or status.is_terminal():
                    break
                time.sleep(0.25)
        except KeyboardInterrupt:
            runner.cancel(handle)
            progress.say(f"cancelled {handle}")
            raise
        pump_thread.join(timeout=10)
        progress.update()
        progress.close()
    state = status.state.name if status is not None else "UNKNOWN"
    echo(f"{handle}: {state} ({progress.step}/{progress.total} steps); run dir {rd.path}")
    return state


class _Progress:
    """A one-line progress bar on a terminal (log lines print above it); on a pipe, a line
    every 10%. Reads new lines of metrics.jsonl (each has "step") incrementally."""

    WIDTH = 30

    def __init__(self, metrics: Path, total: int, echo: Echo) -> None:
        self.metrics, self.total, self.echo = metrics, max(total, 1), echo
        self.step = 0
        self._offset = 0
        self._shown = -1
        self._tty = sys.stderr.isatty()
        import threading

        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock:
            if self._tty:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
            self.echo(line)
            self._draw()

    def update(self) -> None:
        try:
            with open(self.metrics, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                self.step = max(self.step, int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
        with self._lock:
            self._draw()

    def _draw(self) -> None:
        if self._tty:
            done = int(self.WIDTH * min(self.step, self.total) / self.total)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (self.WIDTH - done)}] step {self.step}/{self.total}")
            sys.stderr.flush()
        elif self.step * 10 // self.total > self._shown:
            self._shown = self.step * 10 // self.total
            if self.step:
                self.echo(f"[progress] step {self.step}/{self.total}")

    def close(self) -> None:
        if self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
