"""Atomic, data-parallel-invariant checkpoints.

Layout of one checkpoint::

    checkpoints/step-00000010/
      meta.json                      written last: its presence means "complete"
      model/<module>/tp00-pp00.pt    module shard + its optimizer and LR schedule state
      rng/rank-00003.pt              RNG states of each rank

Module shards are written by the first data-parallel replica only and read by every
replica, so a checkpoint does not depend on data-parallel sizes. Every rank writes into
``.tmp-step-N``; after a barrier rank 0 writes ``meta.json``, renames the directory into
place and only then points ``latest`` at it. A checkpoint without ``meta.json`` (a crash
mid-save) is never loaded; ``latest`` never names one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ...run_dir import RunDir, write_json_atomic

LATEST = "latest"


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and restores this rank's modules, optimizers and RNG."""

    def __init__(self, run_dir: RunDir, layout, parts: dict, optimizers: dict, keep: int) -> None:
        self.run_dir = run_dir
        self.root = run_dir.checkpoint_dir
        self.layout = layout
        self.parts = parts
        self.optimizers = optimizers
        self.keep = keep
        self.rank = dist.get_rank()

    def _shard_file(self, base: Path, module: str) -> Path:
        c = self.layout.module_parallelisms[module].coordinates(self.rank)
        return base / "model" / module / f"tp{c['tp']:02d}-pp{c['pp']:02d}.pt"

    def _writes_shard(self, module: str) -> bool:
        c = self.layout.module_parallelisms[module].coordinates(self.rank)
        return c["dp"] == 0 and c["cp"] == 0

    # ---- save -----------------------------------------------------------------------------
    def save(self, step: int, consumed_samples: int, extra: dict | None = None) -> Path:
        final = self.root / _step_name(step)
        tmp = self.root / f".tmp-{_step_name(step)}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()
        for module, part in self.parts.items():
            if self._writes_shard(module):
                state = {"model": part.state_dict()}
                if module in self.optimizers:
                    state["optimizer"] = self.optimizers[module].state_dict()
                _save_atomic(state, self._shard_file(tmp, module))
        _save_atomic(rng_state(), tmp / "rng" / f"rank-{self.rank:05d}.pt")
        dist.barrier()
        if self.rank == 0:
            meta = {
                "step": step,
                "consumed_samples": consumed_samples,
                "world_size": dist.get_world_size(),
                "time": time.time(),
                **(extra or {}),
            }
            write_json_atomic(tmp / "meta.json", meta)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            (self.root / f".{LATEST}.tmp").write_text(final.name + "\n")
            os.replace(self.root / f".{LATEST}.tmp", self.root / LATEST)
            self._prune()
        dist.barrier()
        return final

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        complete = sorted(p for p in self.root.glob("step-*") if (p / "meta.json").exists())
        for old in complete[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- load -----------------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "meta.json").exists() else None

    def load_latest(self) -> dict | None:
        """Restore this rank from the newest checkpoint; returns its meta (None: fresh start)."""
        path = self.latest()
        if path is None:
            return None
        meta = json.loads((path / "meta.json").read_text())
        if meta["world_size"] != dist.get_world_size():
            raise ValueError(
                f"checkpoint {path} was written by {meta['world_size']} ranks, this job has "
                f"{dist.get_world_size()}; resume with the same layout"
            )
        for module, part in self.parts.items():
            state = torch.load(self._shard_file(path, module), map_location="cpu", weights_only=False)
            part.load_state_dict(state["model"])
            if module in self.optimizers:
                self.optimizers[module].load_state_dict(state["optimizer"])
        rng_file = path / "rng" / f"rank-{self.rank:05d}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return meta
