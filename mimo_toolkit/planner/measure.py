"""Timed runs on this machine: what ``mimo-toolkit calibrate`` measures (CPU, gloo).

:func:`calibrate` times the job's own layout at its micro-batch size and at another one
(same samples, a different number of micro-batches, which separates each module's fixed
cost per micro-batch from its FLOP rate), each twice and interleaved (one run can be 10-20%
off the next on a VM), times gloo all-reduces between two processes (``commbench.py``), and
fits a profile (``calibration.profile_from_timings``).

Training runs go through torchrun into the real entry point (``mimo_toolkit.train``), one
thread per process unless told otherwise (``MIMO_CPU_THREADS``): a profile holds for the
thread count it was measured with. This machine may be shared: :class:`CpuMeter` measures
the CPU other processes took during each run, runs wait for a quiet machine first, and a
disturbed run is repeated once. Pure Python: torch runs only in the child processes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import JobConfig
from ..errors import UserError
from ..launch import write_job
from ..render import job_env
from ..resolve import resolve_job
from ..run_dir import RunDir
from ..runtime.parallel.cpu_threads import usable_cpus  # torch-free
from ..torchrun import TRAIN_MODULE, torchrun_args, train_args
from .calibration import (
    CalibrationProfile,
    ProfileComm,
    ProfileMachine,
    comm_from_allreduces,
    communication_in_timings,
    machine_from_profile,
    micro_batch_counts,
    profile_from_timings,
    split_micro_batch_cost,
    work_flops_per_rank,
)

#: Steps dropped before medians (lazy initialisation, allocator growth, first gloo connections).
WARMUP = 2
#: Share of the machine's CPU other processes may take during a run before it is repeated.
BUSY = 0.10
Echo = Callable[[str], None]


class CpuMeter:
    """CPU seconds other processes used while a block ran: the machine's user + system time
    (/proc/stat) minus that of our finished children. A fraction of all cores."""

    def __enter__(self) -> CpuMeter:
        self._start = (_busy_s(), _children_s(), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, children, start = self._start
        wall = max(time.monotonic() - start, 1e-6)
        self.foreign = max(0.0, (_busy_s() - busy) - (_children_s() - children)) / (wall * usable_cpus())


def _busy_s() -> float:
    try:
        with open("/proc/stat") as f:
            user, nice, system = (int(v) for v in f.readline().split()[1:4])
    except OSError:  # not Linux: no load figures; runs are taken as undisturbed
        return 0.0
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_quiet(timeout: float, span: float = 1.0) -> float:
    """Wait (up to ``timeout`` s) for a second in which others use < ``BUSY`` of the CPU; the
    last load seen."""
    deadline = time.monotonic() + timeout
    while True:
        with CpuMeter() as meter:
            time.sleep(span)
        if meter.foreign < BUSY or time.monotonic() >= deadline:
            return meter.foreign


@dataclass
class TimedRun:
    """One finished training run and what it measured."""

    job: JobConfig
    rows: list[dict]
    foreign_load: float
    wall_s: float

    def step_seconds(self) -> list[float]:
        return [row["step_time_s"] for row in self.rows]

    def module_seconds(self) -> dict[str, float]:
        """Per module, the median over timed steps of its slowest rank's forward + backward seconds."""
        names = self.job.layout.module_parallelisms
        timed = self.rows[WARMUP:]
        return {n: statistics.median(r["module_time_s"][f"{n}/fwd"] + r["module_time_s"][f"{n}/bwd"] for r in timed)
                for n in names}

    def median_step_s(self) -> float:
        return statistics.median(self.step_seconds()[WARMUP:])


def torchrun(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """One node's torchrun on a free port (several jobs may share this machine)."""
    return torchrun_args(python=sys.executable, nnodes=1, nproc_per_node=nproc, rdzv_endpoint="localhost:0",
                         module=module, module_args=args)


def _env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(extra or {}), "MIMO_CPU_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, float]:
    """Run ``cmd`` (its own process group) with its output in ``log``; (foreign load, wall
    seconds). A failure or a timeout is a UserError with the end of the output."""
    start = time.monotonic()
    with CpuMeter() as meter, log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
            proc.wait()
            code = None
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:])
        what = f"exceeded {timeout:.0f} s" if code is None else f"failed with exit code {code}"
        raise UserError(f"timed run {what}; the end of its output:\n{tail}")
    return meter.foreign, time.monotonic() - start


def run_training(recipe: str, preset: str | None, sets: Sequence[str], steps: int, run_dir: Path,
                 threads: int = 1, timeout: float = 300) -> TimedRun:
    """Train ``steps`` steps of the job the options describe (no checkpoints) and read its metrics."""
    resolved = resolve_job(recipe, preset, sets=[*sets, f"train.steps={steps}", "train.save_interval=0"])
    if resolved.config.cluster.gpus_per_node:
        raise UserError("calibration times CPU jobs (gloo) on this machine; this job asks for GPUs")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_job(resolved, "local", run_dir, force=True)
    rd = RunDir(run_dir)
    cmd = torchrun(resolved.world_size, TRAIN_MODULE, train_args(str(rd.job_file), str(rd.path)))
    foreign, wall = _run(cmd, _env(threads, job_env(resolved)), rd.log_dir / "torchrun.log", timeout)
    rows = rd.read_metrics()
    if len(rows) <= WARMUP:
        raise UserError(f"--steps {steps}: need more than {WARMUP} steps ({WARMUP} are warm-up)")
    return TimedRun(resolved.config, rows, foreign, wall)


def quiet_run(run: Callable[[], TimedRun], procs: int, echo: Echo, attempts: int = 2, wait_s: float = 20) -> TimedRun:
    """``run()`` of a ``procs``-process job on a quiet machine; repeated while others took more
    than the cores the job leaves idle (plus ``BUSY``), keeping the least disturbed attempt."""
    allowed = max(0, usable_cpus() - procs) / usable_cpus() + BUSY
    best: TimedRun | None = None
    for attempt in range(attempts):
        wait_until_quiet(wait_s)
        timed = run()
        if best is None or timed.foreign_load < best.foreign_load:
            best = timed
        if timed.foreign_load < allowed:
            break
        echo(f"  other processes took {timed.foreign_load:.0%} of the CPU during that run"
             + ("; repeating it" if attempt + 1 < attempts else ""))
    assert best is not None
    return best


def measure_comm(work: Path, threads: int = 1, ranks: int = 2) -> ProfileComm:
    """Bus bandwidth and latency of gloo all-reduces between ``ranks`` processes here."""
    out = work / "commbench.json"
    cmd = torchrun(ranks, "mimo_toolkit.planner.commbench", [str(out)])
    _run(cmd, _env(threads), work / "commbench.log", timeout=120)
    data = json.loads(out.read_text())
    return comm_from_allreduces(data["ranks"], [tuple(p) for p in data["allreduce"]])


def other_micro_batch(recipe: str, preset: str | None, sets: Sequence[str], job: JobConfig) -> int:
    """A second micro-batch size the layout accepts: half the job's, else double."""
    mbs = job.train.micro_batch_size
    for other in ([mbs // 2] if mbs % 2 == 0 else []) + [mbs * 2]:
        try:
            resolve_job(recipe, preset, sets=[*sets, f"train.micro_batch_size={other}"])
        except UserError:
            continue
        return other
    raise UserError(f"train.micro_batch_size={mbs}: no other micro-batch size fits this layout and batch; "
                    "calibration needs two to separate fixed costs from FLOP rates")


def memory_per_process_gib(procs: int) -> float:
    """Available memory (/proc/meminfo) shared by ``procs`` processes."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        kib = float(fields["MemAvailable"].split()[0])
    except (OSError, KeyError, ValueError):
        kib = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 1024
    return kib / (1 << 20) / max(procs, 1)


def fit_profile(groups: Sequence[Sequence[TimedRun]], comm: ProfileComm, provenance: dict[str, str]) -> CalibrationProfile:
    """The profile of timed runs of one layout: ``groups`` of repeated runs at different
    micro-batch sizes, the first the calibrated job's own. Per group, the median over its runs
    of each module's time, less the communication it includes; split into a fixed cost per
    micro-batch and a FLOP rate per module; then the step overhead of the first group."""
    first = groups[0][0].job
    memory = memory_per_process_gib(first.cluster.procs_per_node)
    comm_machine = machine_from_profile(
        CalibrationProfile(machine=ProfileMachine(device="cpu", memory_gib=memory), comm=comm), "(comm only)")
    points: dict[str, list[tuple[float, float, float]]] = {}
    compute_first: dict[str, float] = {}
    for runs in groups:
        job = runs[0].job
        comm_s, counts, flops = communication_in_timings(job, comm_machine), micro_batch_counts(job), work_flops_per_rank(job)
        for name in comm_s:
            measured = statistics.median(run.module_seconds()[name] for run in runs)
            compute = max(measured - comm_s[name], 0.05 * measured)
            points.setdefault(name, []).append((counts[name], flops[name], compute))
            compute_first.setdefault(name, compute)
    fixed = {name: split_micro_batch_cost(p)[0] for name, p in points.items()}
    steps = [s for run in groups[0] for s in run.step_seconds()[WARMUP:]]
    description = f"{usable_cpus()} CPU cores, gloo, {provenance.get('threads_per_process', '1')} thread(s) per process"
    return profile_from_timings(first, "cpu", compute_first, steps, memory_gib=memory, description=description,
                                warmup=0, micro_batch_seconds=fixed, comm=comm, provenance=provenance)


@dataclass
class Calibration:
    profile: CalibrationProfile
    runs: list[TimedRun]
    seconds: float


def calibrate(recipe: str, preset: str | None, sets: Sequence[str], steps: int = 10, repeats: int = 2,
              threads: int = 1, echo: Echo = print) -> Calibration:
    """Measure this machine for ``recipe``/``preset`` with ``sets`` (see the module docstring):
    ``repeats`` runs at each of two micro-batch sizes, interleaved, and the gloo timing."""
    start = time.monotonic()
    resolved = resolve_job(recipe, preset, sets=list(sets))
    base = resolved.config
    sizes = (base.train.micro_batch_size, other_micro_batch(recipe, preset, sets, base))
    groups: dict[int, list[TimedRun]] = {mbs: [] for mbs in sizes}
    with tempfile.TemporaryDirectory(prefix="mimo-calibrate-") as tmp:
        work = Path(tmp)
        echo("timing gloo all-reduces between 2 processes")
        wait_until_quiet(10)
        comm = measure_comm(work, threads)
        for repeat in range(repeats):
            for mbs in sizes:
                echo(f"timing {recipe}:{base.preset} ({base.layout.deployment_mode}, micro-batch {mbs}), "
                     f"{steps} steps, run {repeat + 1}/{repeats}")
                run_sets = [*sets, f"train.micro_batch_size={mbs}"]
                groups[mbs].append(quiet_run(lambda s=run_sets, d=work / f"mbs{mbs}-{repeat}": run_training(
                    recipe, preset, s, steps, d, threads), resolved.world_size, echo))
    runs = [run for mbs in sizes for run in groups[mbs]]
    provenance = {
        "sets": " ".join(sets), "threads_per_process": str(threads), "cores": str(usable_cpus()),
        "micro_batch_sizes": ",".join(map(str, sizes)), "steps": str(steps), "repeats": str(repeats),
        "foreign_load": ",".join(f"{r.foreign_load:.2f}" for r in runs),
    }
    profile = fit_profile([groups[mbs] for mbs in sizes], comm, provenance)
    return Calibration(profile, runs, time.monotonic() - start)
