"""Checkpoints on torch.distributed.checkpoint: layout-independent, atomic, written in the background.

What one checkpoint holds (keys of one DCP checkpoint; ``canonical`` explains the shapes)::

    model/<module>/<canonical name>               trained weights (full tensors, TP1/PP1 shape)
    optim/<module>/<canonical name>/master        fp32 master weights
    optim/<module>/<canonical name>/exp_avg       Adam moments
    optim/<module>/<canonical name>/exp_avg_sq
    optim/<module>/counters                       Adam step count and LR schedule position
    rng/rank-00003                                each rank's RNG states

Frozen weights never change, so they are written once per run, into ``frozen-<hash>/`` (the
same format), which every later checkpoint names in its ``meta.json``. Every rank offers the
boxes of the full tensors it holds: its tensor-parallel block of each parameter of its
pipeline stage, and with a distributed optimizer its shard of the optimizer state. DCP
writes each box once (boxes offered by several data-parallel replicas are deduplicated) and,
on load, reads the boxes the NEW layout asks for, whatever layout wrote them: TP, PP, DP,
deployment mode, node count and optimizer sharding may all change between attempts.

Atomicity: ranks write into ``.tmp-step-N``; when DCP's save returns (every rank's files are
written and synced, and the ``.metadata`` index), rank 0 writes ``meta.json`` listing every
file with its size, renames the directory to ``step-N`` and only then replaces ``latest``. A
crash at any point leaves ``latest`` naming the previous complete checkpoint.

Asynchronous save: the state is copied to host memory on the training thread (the only time
training waits), then a background thread writes it over a dedicated gloo group, so the save's
collectives never interleave with training's. One save is in flight at a time; the next save,
the end of training and a preemption wait for it. A failed background save (a full disk, say)
is reported with its reason; the previous checkpoint stays ``latest`` and training goes on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from ... import checkpoints
from ...checkpoints import LATEST, META, step_name
from ...errors import UserError
from ...run_dir import RunDir, write_json_atomic
from . import dcp_io
from ..model.init import state_tensors
from .canonical import Placement, module_placements
from .dcp_io import Boxes

#: The checkpoint group's collective timeout: a save waits for the slowest rank's writes.
SAVE_TIMEOUT = timedelta(minutes=30)
#: Fault injection for tests: seconds a save waits between writing its files and publishing
#: them (``meta.json``, rename, ``latest``), as a slow file system would.
SLOW_SAVE_ENV = "MIMO_TOOLKIT_TEST_SLOW_SAVE_S"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _boxes(placement: Placement, flat: torch.Tensor, dtype: torch.dtype, start: int = 0, end: int | None = None,
           into: Boxes | None = None) -> Boxes:
    """The boxes of ``placement`` covering the local flat range ``[start, end)``; ``flat`` holds
    exactly that range."""
    boxes = into or Boxes(placement.full_shape, dtype)
    for piece in placement.pieces(start, end):
        boxes.boxes[piece.offsets] = piece.of(flat, base=start)
    return boxes


def staged(state: dict) -> dict:
    """A host-memory copy of ``state`` that training may not touch (what a background save writes)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, Boxes):
            out[key] = Boxes(value.size, value.dtype, {o: t.detach().to("cpu", copy=True) for o, t in value.boxes.items()})
        else:
            out[key] = value
    return out


@dataclass
class Pending:
    """A save in flight."""

    step: int
    thread: threading.Thread | None = None
    error: BaseException | None = None


class Checkpointer:
    """Saves and restores this rank's modules, optimizers and RNG."""

    def __init__(self, run_dir: RunDir, job, parts: dict, optimizers: dict, async_save: bool = True) -> None:
        self.run_dir = run_dir
        self.root = run_dir.checkpoint_dir
        self.job = job
        self.parts = parts
        self.optimizers = optimizers
        self.keep = job.train.keep_checkpoints
        self.async_save = async_save
        self.rank = dist.get_rank()
        self.group = dist.new_group(backend="gloo", timeout=SAVE_TIMEOUT)  # the save thread's own: no other use
        self.placements = {name: self._placements(name, part) for name, part in parts.items()}
        self.pending: Pending | None = None
        self.frozen_name = self._frozen_store_name()
        self.frozen_saved = self._agreed(lambda: (self.root / self.frozen_name / META).exists())
        self.last_error: str | None = None

    def _placements(self, name: str, part: torch.nn.Module) -> dict[str, Placement]:
        par = self.job.layout.module_parallelisms[name]
        c = par.coordinates(self.rank)
        vocab = self.job.language_model.vocab_size if name == self.job.layout.language_module else None
        return module_placements(part, c["tp"], par.tp, c["pp"], vocab)

    def _agreed(self, decide) -> bool:
        """Rank 0's answer, on every rank (the file system may lag on other nodes)."""
        box = [decide() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return bool(box[0])

    def _frozen_store_name(self) -> str:
        """``frozen-<hash of the frozen parameters' keys>``: the same for every layout."""
        keys = sorted(f"{m}/{k}" for m, k in self._frozen_params())
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, keys, group=self.group)
        digest = hashlib.sha256(json.dumps(sorted(set(sum(everyone, [])))).encode()).hexdigest()[:12]
        return f"frozen-{digest}"

    def _frozen_params(self):
        for module, part in self.parts.items():
            for name, param in part.named_parameters():
                if not param.requires_grad:
                    yield module, self.placements[module][name].key

    # ---- the state, as DCP sees it ------------------------------------------------------------
    def model_state(self, trained: bool) -> dict:
        """``model/<module>/<key>`` boxes of this rank's trained (or frozen) weights: views of
        the tensors themselves. Persistent buffers count as trained (saved at every step: they
        are small, and nothing promises they stay constant)."""
        state = {}
        for module, part in self.parts.items():
            for name, tensor in state_tensors(part):
                with_steps = tensor.requires_grad or not isinstance(tensor, torch.nn.Parameter)
                if with_steps == trained:
                    pl = self.placements[module][name]
                    state[f"model/{module}/{pl.key}"] = _boxes(pl, tensor.detach().view(-1), tensor.dtype)
        return state

    def optimizer_state(self) -> dict:
        """Master weights and Adam moments (views of the live state), and the counters."""
        state = {}
        for module, opt in self.optimizers.items():
            by_param = {id(p): self.placements[module][n] for n, p in self.parts[module].named_parameters()}
            for segment, tensors in opt.pieces():
                pl = by_param[id(segment.param)]
                for kind, flat in tensors.items():
                    key = f"optim/{module}/{pl.key}/{kind}"
                    state[key] = _boxes(pl, flat, flat.dtype, segment.start, segment.end, into=state.get(key))
            state[f"optim/{module}/counters"] = opt.counters()
        return state

    def training_state(self) -> dict:
        return {**self.model_state(trained=True), **self.optimizer_state(), f"rng/rank-{self.rank:05d}": rng_state()}

    # ---- save ---------------------------------------------------------------------------------
    def save(self, step: int, meta: dict, blocking: bool = False) -> None:
        """Checkpoint ``step``: copy the state, then write it (in the background unless
        ``blocking`` or async saves are off). ``meta`` goes into ``meta.json``."""
        self.wait()
        tmp, final = self.root / f".tmp-{step_name(step)}", self.root / step_name(step)
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):  # a crash mid-save left it; nothing writes there now
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier(group=self.group)
        frozen = None if self.frozen_saved else staged(self.model_state(trained=False))
        state = staged(self.training_state())
        meta = {**meta, "step": step, "world_size": dist.get_world_size(), "frozen": self.frozen_name,
                "layout": self._layout_now()}
        pending = self.pending = Pending(step)
        pending.thread = threading.Thread(target=self._write, args=(pending, state, frozen, tmp, final, meta),
                                          name=f"checkpoint-{step}", daemon=True)
        pending.thread.start()
        if blocking or not self.async_save:
            self.wait(raise_error=True)

    def _write(self, pending: Pending, state: dict, frozen: dict | None, tmp: Path, final: Path, meta: dict) -> None:
        try:
            if frozen is not None:
                self._write_frozen(frozen)
            dcp_io.save(state, tmp, self.group)
            time.sleep(float(os.environ.get(SLOW_SAVE_ENV, "0")))  # fault injection: a slow file system
            if self.rank == 0:
                self._publish(tmp, final, meta)
        except BaseException as exc:  # noqa: BLE001 - reported by wait(), on the training thread
            pending.error = _as_disk_full(_unwrap(exc), self.root)  # before the cleanup frees room
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)

    def _write_frozen(self, frozen: dict) -> None:
        tmp = self.root / f".tmp-{self.frozen_name}"
        dcp_io.save(frozen, tmp, self.group)
        if self.rank == 0:
            _write_meta(tmp, {"format": checkpoints.FORMAT, "step": None, "frozen_store": True})
            _replace_dir(tmp, self.root / self.frozen_name)
        self.frozen_saved = True

    def _publish(self, tmp: Path, final: Path, meta: dict) -> None:
        """Rank 0, after every rank's files are written: meta.json, rename, latest, prune."""
        _write_meta(tmp, {"format": checkpoints.FORMAT, **meta})
        _replace_dir(tmp, final)
        pointer = self.root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, self.root / LATEST)
        self._prune()

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        complete = sorted(p for p in self.root.glob("step-*") if (p / META).exists())
        for old in complete[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def wait(self, raise_error: bool = False) -> None:
        """Finish the save in flight. Its failure is printed (rank 0) with the reason and, with
        ``raise_error``, raised; the previous checkpoint stays ``latest`` either way."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        pending.thread.join()
        if pending.error is None:
            return
        previous = checkpoints.latest(self.run_dir) if self.rank == 0 else None
        self.last_error = (f"checkpoint of step {pending.step} failed: {type(pending.error).__name__}: "
                           f"{pending.error}; latest stays {previous.path.name if previous else 'none'}")
        if self.rank == 0:
            print(f"[mimo-toolkit] {self.last_error}", flush=True)
        if raise_error:
            raise RuntimeError(self.last_error) from pending.error

    # ---- load ---------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        info = checkpoints.latest(self.run_dir)
        return info.path if info else None

    def load_latest(self) -> dict | None:
        """Restore this rank from the newest checkpoint, whatever layout wrote it; returns its
        meta (None: a fresh start)."""
        info = checkpoints.latest(self.run_dir)
        if info is None:
            return None
        state = self.training_state()
        same_layout = info.meta.get("layout") == self._layout_now() and info.meta["world_size"] == dist.get_world_size()
        rng_key = f"rng/rank-{self.rank:05d}"
        if not same_layout:
            del state[rng_key]
        _load(state, info.path, self.group)
        _load(self.model_state(trained=False), info.frozen, self.group)  # every rank: a collective
        for module, opt in self.optimizers.items():
            opt.load_counters(state[f"optim/{module}/counters"])
        if same_layout:
            set_rng_state(state[rng_key])
        info.meta["rng_restored"] = same_layout
        return info.meta

    def _layout_now(self) -> dict:
        return self.job.to_dict()["layout"]


def _load(state: dict, path: Path, group) -> None:
    try:
        dcp_io.load(state, path, group)
    except CheckpointException as exc:
        raise _unwrap(exc) from None


def _unwrap(exc: BaseException) -> BaseException:
    """DCP wraps every rank's failure in one CheckpointException: the first that says what
    went wrong (a UserError about the checkpoint, an OSError such as a full disk), else the
    first."""
    if not isinstance(exc, CheckpointException):
        return exc
    inner = [f[0] if isinstance(f, tuple) else f for f in exc.failures.values()]
    return next((e for e in inner if isinstance(e, (UserError, OSError))), inner[0] if inner else exc)


#: A save that fails with less room than this left on its file system failed for lack of room.
DISK_FULL_BELOW = 1 << 20


def _as_disk_full(error: BaseException, where: Path) -> BaseException:
    """A write that runs out of room surfaces as ``OSError(ENOSPC)`` from a plain file write,
    but as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`` from
    inside ``torch.save``'s zip writer, depending on which file a rank was writing when the
    disk filled. Name the cause the same way every time (the original is chained)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return error
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return error
    if free >= DISK_FULL_BELOW:
        return error
    full = OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free // 1024} KiB left)", str(where))
    full.__cause__ = error
    return full


def _write_meta(directory: Path, meta: dict) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != META}
    write_json_atomic(directory / META, {**meta, "files": files, "time": time.time()})


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
