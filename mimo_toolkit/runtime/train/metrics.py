"""Per-step metrics: one JSON line per step in ``metrics.jsonl`` and a progress line (rank 0).

Per-module forward/backward seconds are the slowest rank's (one MAX all-reduce per step),
since the slowest replica sets the pace. MFU is reported on GPUs only: model FLOPs of the
step (``mimo_toolkit.planner`` formulas, the same the planner predicts with) over the
world's peak dense BF16 throughput.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist

from ...run_dir import RunDir
from .trackers import log_all


def model_flops_per_step(job) -> float:
    """Model FLOPs of one optimizer step: every module's forward + backward work (frozen parts
    forward only, no recomputation counted), the planner's formulas."""
    from ...planner.workload import module_work

    return sum(w.work_flops for w in module_work(job)) * job.train.global_batch_size


def peak_flops_per_device(device: torch.device, precision: str) -> float | None:
    """Published dense peak of this rank's GPU (None on CPU or an unknown GPU: no MFU)."""
    if device.type != "cuda":
        return None
    from ...planner.hardware import GPUS

    name = torch.cuda.get_device_name(device).lower()
    for kind, machine in GPUS.items():
        if kind in name:
            return machine.peak(precision)
    return None


def slowest_times(times: dict[str, float], keys: list[str], device: torch.device) -> dict[str, float]:
    """MAX over ranks of each '<module>/fwd|bwd' time (keys in the same order everywhere)."""
    vec = torch.tensor([times.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.MAX)
    return {k: round(v, 6) for k, v in zip(keys, vec.tolist())}


class MetricsLog:
    """Appends metrics (rank 0 only) to metrics.jsonl and the experiment trackers
    (``trackers.py``), and prints progress."""

    def __init__(self, run_dir: RunDir, rank: int, total_steps: int, log_interval: int) -> None:
        self.enabled = rank == 0
        self.path = run_dir.metrics_file
        self.total = total_steps
        self.interval = log_interval
        self.trackers: list = []
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log_all(self.trackers, row)
        step = row["step"]
        if step % self.interval == 0 or step == self.total or "valid_loss" in row:
            parts = [
                f"step {step}/{self.total}",
                f"loss {row['loss']:.4f}",
                f"lr {row['lr']:.2e}",
                f"grad {row['grad_norm']:.3f}",
                f"{row['step_time_s']:.3f} s/step",
                f"{row['tokens_per_s']:.0f} tok/s",
            ]
            if "valid_loss" in row:
                parts.insert(2, f"valid loss {row['valid_loss']:.4f}")
            if row.get("mfu") is not None:
                parts.append(f"MFU {100 * row['mfu']:.1f}%")
            if row.get("skipped"):
                parts.append("SKIPPED (inf/nan)")
            print(" | ".join(parts), flush=True)

    def close(self) -> None:
        """Finish the trackers' runs (flushes W&B's offline run and TensorBoard's events)."""
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def say(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stdout, flush=True)
