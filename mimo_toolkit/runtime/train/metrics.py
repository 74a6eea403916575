"""Per-step metrics: one JSON line per step in ``metrics.jsonl`` and a progress line (rank 0).

Per-module forward/backward seconds are the slowest rank's (one MAX all-reduce per step),
since the slowest replica sets the pace. MFU is reported on GPUs the device table knows
(``mimo_toolkit.costs``: the FLOP formulas and peaks the planner predicts with): model FLOPs
of the step over the world's peak for the run's precision, and each row names that peak
(``mfu_peak``). fp32 runs count the plain FP32 peak unless TF32 matmuls are enabled, as
PyTorch leaves them off by default.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...run_dir import RunDir
from .trackers import log_all


def model_flops_per_step(job) -> float:
    """Model FLOPs of one optimizer step (``costs.flops.step_flops``)."""
    from ...costs.flops import step_flops

    return step_flops(job)


@dataclass(frozen=True)
class Peak:
    """The peak MFU is measured against, and what it is."""

    flops_per_s: float
    description: str
    """E.g. 'H100 PCIe bf16 dense 756 TFLOP/s' (written to metrics.jsonl as ``mfu_peak``)."""


def device_peak(device: torch.device, precision: str) -> Peak | None:
    """This rank's GPU's published peak for ``precision`` (None on CPU or an unknown GPU: no MFU)."""
    if device.type != "cuda":
        return None
    from ...costs.devices import device_by_cuda_name

    known = device_by_cuda_name(torch.cuda.get_device_name(device))
    if known is None:
        return None
    tf32 = torch.backends.cuda.matmul.allow_tf32
    return Peak(known.peak_flops(precision, tf32), known.describe_peak(precision, tf32))


def slowest_times(times: dict[str, float], keys: list[str], device: torch.device):
    """MAX over ranks of each '<module>/fwd|bwd' time (keys in the same order everywhere).

    The all-reduce is started here and waited for by calling the returned function: the
    trainer starts it right after the step's consensus, so that it travels while the
    optimizers step, and no rank waits there for another rank's optimizer (issue #13)."""
    vec = torch.tensor([times.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    work = dist.all_reduce(vec, op=dist.ReduceOp.MAX, async_op=True)

    def result() -> dict[str, float]:
        work.wait()
        return {k: round(v, 6) for k, v in zip(keys, vec.tolist())}

    return result


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
