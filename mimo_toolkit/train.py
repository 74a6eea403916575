"""The in-job entrypoint: ``python -m mimo_toolkit.train --config RUN_DIR/job.json --run-dir RUN_DIR``.

Launched under torchrun on every node (see ``templates/slurm.sbatch.j2`` and
``mimo_toolkit.components``). Reads the resolved config that ``render``/``submit`` wrote,
so the job runs exactly what was rendered; rerunning with the same run directory resumes
from its latest checkpoint.

Exit codes: 0 completed; 2 bad config or data (found before training or inside the job: one
line, no traceback); 75 (``EXIT_REQUEUE``) saved after a preemption signal; 3
(``EXIT_PEER_FAILED``) another rank failed first; 1 this rank failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import UserError
from .run_dir import RunDir, StopRequest
from .runtime.eager import run_eagerly


class _Tee:
    """Write a Python stream to the console and this rank's log file."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _setup_rank_logging(run_dir: RunDir, rank: int) -> None:
    import faulthandler

    run_dir.log_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.rank_log(rank), "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    sys.stdout = _Tee(sys.stdout, log)
    sys.stderr = _Tee(sys.stderr, log)
    faulthandler.enable(file=log)
    for pattern in (
        ".*is experimental.*",
        ".*absl.logging.*",
        ".*Transformer Engine and Apex are not installed.*",  # expected on CPU: local layers
        ".*CUDA_DEVICE_MAX_CONNECTIONS.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _load(config: str):
    from .resolve import load_manifest

    try:
        data = json.loads(Path(config).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {config}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--config {config}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return load_manifest(data)


def check_checkpoint(rd: RunDir, job) -> None:
    """Before any process group: the checkpoint this job would resume has all its files, at
    their sizes, and was written by this model (the resume guard's model check)."""
    from .checkpoints import check_resume, latest, verify_files

    info = latest(rd)
    if info is not None:
        verify_files(info)
        if info.config is not None:
            check_resume(info.config, job.to_dict(), f"{rd.path.name}/checkpoints/{info.path.name}", force=True)


def freeze_startup_objects() -> None:
    """Take every object alive now out of the garbage collector's scans (``gc.freeze``).

    After the runtime's imports those are ~430k modules, classes and functions from torch,
    megatron-core and the toolkit: they live as long as the process, yet every full
    collection (Python starts one after enough allocations, at a point nobody chooses) would
    walk them all, 0.21-0.24 s each on this project's dev VM. On a lent GPU box a pause of
    that size (most likely one) landed inside the model build: 0.24 of the pretrained import's
    0.6 s (docs/bench_import.md); in a training step it would stall every rank waiting on this one.
    Objects the job creates from here on are collected as usual."""
    import gc

    gc.freeze()


def main(config: str, run_dir: str) -> int:
    """Train the job in ``config``; returns the process exit code."""
    stop = StopRequest().install()  # before anything slow: a preemption signal is never lost
    rank = int(os.environ.get("RANK", "0"))
    rd = RunDir(run_dir)
    _setup_rank_logging(rd, rank)
    try:
        resolved = _load(config)
    except UserError as exc:
        if rank == 0:
            print(f"mimo-toolkit: error: {exc}", file=sys.stderr)
        return 2
    job = resolved.config
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != resolved.world_size:
        if rank == 0:
            print(
                f"mimo-toolkit: error: the layout needs {resolved.world_size} ranks, this job has "
                f"{world} (nodes x processes per node); the allocation does not fit the layout",
                file=sys.stderr,
            )
        return 2

    try:
        check_checkpoint(rd, job)
    except UserError as exc:
        if rank == 0:
            print(f"mimo-toolkit: error: {exc}", file=sys.stderr)
        return 2

    if job.cluster.gpus_per_node == 0:
        # megatron-core wraps a few elementwise functions (quick_gelu, ...) in torch.compile:
        # ~20 s of compilation per process on CPU for no measurable gain at these sizes.
        run_eagerly()
    import torch

    from .runtime.parallel.distributed import failure_board, init_distributed, shutdown
    from .runtime.train.trainer import Trainer

    freeze_startup_objects()
    if job.cluster.gpus_per_node == 0 or not torch.cuda.is_available():
        from .runtime.parallel.cpu_threads import rank_cpu_share

        torch.set_num_threads(rank_cpu_share())  # the node's cores, shared by its ranks
    board = failure_board(rank, world, rd, job.train.timeout_s)
    board.start()
    trainer = None
    try:
        ctx = init_distributed(job.train.timeout_s, want_gpu=job.cluster.gpus_per_node > 0, stop=stop)
        trainer = Trainer(job, rd, ctx)
        code = trainer.train()
    except UserError as exc:  # a config or data error found in the job: one line, exit 2, no traceback
        board.record(exc, trainer.step if trainer else None)
        print(f"mimo-toolkit: error: {exc}", file=sys.stderr, flush=True)
        board.abort(f"rank {rank}: {exc}", code=2)
        return 2
    except BaseException as exc:  # noqa: BLE001 - every failure must end every rank
        board.record(exc, trainer.step if trainer else None)
        import traceback

        traceback.print_exc()
        board.abort(f"rank {rank} failed")
        return 1
    return shutdown(board, code)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mimo_toolkit.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="resolved job config (job.json) written by render/submit")
    parser.add_argument("--run-dir", required=True, help="run directory (logs, metrics, checkpoints)")
    args = parser.parse_args(argv)
    sys.exit(main(args.config, args.run_dir))


if __name__ == "__main__":
    cli()
