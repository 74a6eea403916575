"""``--scheduler local``: every rank on this machine, through TorchX's ``local_cwd``
scheduler's Python API, waiting for the job.

:meth:`LocalBackend.materialize` asks TorchX for its dry run of the component's AppDef (the
exact process TorchX will start: torchrun's argument list and environment); submit hands
that same request to ``Runner.schedule``, streams the ranks' log lines (``[rankN] ...``)
with a progress line fed by rank 0's metrics.jsonl, and returns the exit code of the run
(:func:`~mimo_toolkit.schedulers.base.exit_code_of_run`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..render import launch_env
from ..run_dir import RunDir
from .base import Backend, Echo, LaunchRequest, Submission, SweepRequest, exit_code_of_run, write_files

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs import JobRecord
    from ..resolve import ResolvedJob
    from ..sweep import Element

TORCHX_SCHEDULER = "local_cwd"


class LocalBackend(Backend):
    name = "local"

    def materialize(self, resolved: "ResolvedJob", run_dir, template_dir=None) -> LaunchRequest:
        from torchx.runner import get_runner

        from ..components import train

        rd = RunDir(run_dir)
        app = train(**local_component_args(resolved, rd))
        info = get_runner().dryrun(app, TORCHX_SCHEDULER, cfg={"log_dir": str(rd.log_dir / "torchx")})
        (replica,) = info.request.role_params[app.roles[0].name]  # one node: one replica
        return self.request(resolved, rd.path, self.base_files(resolved), list(replica.args),
                            env=dict(replica.env), native=info)

    def submit(self, request: LaunchRequest, resolved: "ResolvedJob", *, force: bool = False,
               echo: Echo = print) -> Submission:
        write_files(request, resolved, force=force)
        rd = RunDir(request.run_dir)
        handle, state, progress = run_local(request.native, rd, resolved.config.train.steps, echo,
                                            on_start=lambda h: self.register(resolved, h, rd.path, request.array_id))
        summary = f"{handle}: {state} ({progress.step}/{progress.total} steps); run dir {rd.path}"
        return Submission(handle, exit_code_of_run(rd, state), summary)

    def materialize_sweep(self, elements: list["Element"], run_dir, template_dir=None,
                          throttle: int | None = None) -> SweepRequest:
        """One local run per element, in ``RUN_DIR/<element>``, one after another."""
        rd = RunDir(run_dir)
        parts = []
        for e in elements:
            part = self.materialize(e.resolved, rd.path / e.name, template_dir)
            part.array_id = str(rd.path)
            parts.append(part)
        return SweepRequest(self.name, rd.path, list(elements), parts)

    def submit_sweep(self, request: SweepRequest, *, force: bool = False, echo: Echo = print) -> Submission:
        """Each element in turn; the sweep's exit code is the first failing element's."""
        codes = []
        for i, (element, part) in enumerate(zip(request.elements, request.parts)):
            echo(f"[sweep] element {i + 1}/{len(request.parts)}: {' '.join(element.sets)}")
            done = self.submit(part, element.resolved, force=force, echo=echo)
            echo(f"[sweep] {done.summary}")
            codes.append(done.exit_code)
        failed = [c for c in codes if c]
        summary = f"sweep of {len(codes)} element(s): {len(codes) - len(failed)} succeeded; run dirs in {request.run_dir}"
        return Submission(str(request.run_dir), failed[0] if failed else 0, summary)

    def states(self, records: list["JobRecord"]) -> dict[str, str]:
        return {}  # the TorchX runner that knew the app ended with `submit`: the run dir decides

    def cancel(self, record: "JobRecord") -> str:
        raise UserError(f"job {record.job_id} ran with --scheduler local; stop it with Ctrl-C in its terminal")

    def runs_here(self, resolved: "ResolvedJob") -> bool:
        return True


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
        "env": launch_env(resolved, rd.path),
    }


def run_local(info, rd: RunDir, steps: int, echo: Echo, on_start=lambda handle: None):
    """Schedule TorchX's dry-run ``info`` on local_cwd and wait; streams ``[rankN]`` log
    lines and the progress. Returns (app handle, final state name, progress)."""
    from torchx.runner import get_runner
    from torchx.schedulers.api import Stream

    role = info._app.roles[0].name
    progress = _Progress(rd.metrics_file, steps, echo)
    with get_runner() as runner:
        handle = runner.schedule(info)
        on_start(handle)
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
        pump_thread.join(timeout=60)  # the last log lines, even on a busy machine
        progress.update()
        progress.close()
    state = status.state.name if status is not None else "UNKNOWN"
    return handle, state, progress


class _Progress:
    """Training progress fed by rank 0's metrics.jsonl (read incrementally). On a terminal:
    a tqdm bar (step/total, rate, ETA, last loss) that log lines print above; otherwise plain
    ``[progress] step N/TOTAL`` lines every 10%."""

    def __init__(self, metrics: Path, total: int, echo: Echo) -> None:
        self.metrics, self.total, self.echo = metrics, max(total, 1), echo
        self.step = 0
        self._offset = 0
        self._shown = -1
        self._lock = threading.Lock()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)

    def say(self, line: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.write(line, file=sys.stdout)  # clears the bar, prints, redraws it
            else:
                self.echo(line)

    def update(self) -> None:
        try:
            with open(self.metrics, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        last: dict = {}
        for line in complete.splitlines():
            try:
                last = json.loads(line)
                self.step = max(self.step, int(last["step"]))
            except (ValueError, KeyError, TypeError):
                continue
        with self._lock:
            self._draw(last)

    def _draw(self, last: dict) -> None:
        if self._bar is not None:
            self._bar.update(min(self.step, self.total) - self._bar.n)
            if "loss" in last:
                self._bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
        elif self.step * 10 // self.total > self._shown:
            self._shown = self.step * 10 // self.total
            if self.step:
                self.echo(f"[progress] step {self.step}/{self.total}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
