"""This rank's step batches, prepared in worker processes ahead of the step that needs them.

A step's data is a pure function of the step index (``batching.py``), so the loader is a
``torch.utils.data.DataLoader`` over step indices: ``data.num_workers`` processes each build
whole steps (read files, decode images, compute log-mels, collate), ``data.prefetch`` steps
ahead per worker, in order; on CUDA the batches come in pinned memory so the copies to the
device do not block, and on CPU a thread takes the next step's batch off the workers' queue
(unpickling its tensors) while the training thread computes or waits for a peer. Nothing about the data position is state: a resumed run starts the
loader at its first step and gets exactly the batches the uninterrupted run got, and
``num_workers=0`` loads the same batches in the training process.

Under ``data.on_bad_sample=skip`` each batch then passes the step's agreement on samples
whose media failed to decode (``undecodable.py``: one small all-reduce, in the training
process, so every rank drops the same samples from the loss).

An exception in a worker (``data.on_bad_sample=stop`` meeting an undecodable file) is
re-raised in the training process as the same exception, so it stays a one-line error.
Workers ignore the preemption signals: Slurm and torchrun send them to every process of the
job, and the training process stops cleanly (finishes the step, saves) while its workers
would otherwise die and fail the rank. Since they ignore SIGTERM, they are stopped the
orderly way (an end marker on their queue) when the loader closes, at the latest at the
interpreter's exit, before ``multiprocessing`` would ``terminate()`` them and wait forever.
"""

from __future__ import annotations

import atexit
import queue
import signal
import threading
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ...run_dir import StopRequest
from .batching import ReplicaData, StepBatch
from .undecodable import DecodeAgreement, decoding_can_fail


class _Failure:
    """An exception raised while building a step in a worker, carried to the trainer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Steps(Dataset):
    def __init__(self, source: ReplicaData) -> None:
        self.source = source

    def __getitem__(self, step: int) -> StepBatch | _Failure:
        try:
            return self.source.step(step)
        except Exception as exc:  # noqa: BLE001 - carried to the trainer and raised there
            return _Failure(exc)


class _From(Sampler):
    """Step indices ``start, start + 1, ...`` (before ``stop``)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class _TakenAhead:
    """The next item of a worker-fed iterator, taken off the workers' queue by a thread.

    Taking a step from a worker unpickles its tensors (shared-memory handles, one per tensor:
    ~10 ms for a small step on CPU); done in the training step, that sits on the
    heterogeneous pipeline's critical path (before an encoder's first forward). The thread
    takes one step ahead, mostly while the training thread waits for a peer; the DataLoader's
    pin-memory thread does the same on CUDA."""

    _END = object()

    def __init__(self, it: Iterator) -> None:
        self._it = it
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mimo-data-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - a dead worker: raised in the training thread
            self._put(_Failure(exc))
            return
        self._put(self._END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self):
        item = self._ready.get()
        if item is self._END:
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the step it is taking) and let go of the iterator."""
        self._stop.set()
        self._thread.join()
        self._it = None


class StepLoader:
    """``step(t)`` returns this rank's :class:`StepBatch` of step ``t``; asked for steps in
    order it takes them from workers that are already ahead, otherwise (the first step,
    or another split's) it restarts there."""

    def __init__(self, source: ReplicaData, stop: int, workers: int, prefetch: int, pin_memory: bool,
                 agreement: DecodeAgreement | None = None) -> None:
        self.source = source
        self.agreement = agreement
        """Run on every batch in the training process (``undecodable.py``); None: nothing can fail."""
        self.stop = stop
        self.workers = workers
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self._iter: Iterator | None = None
        self._next = -1
        self._closes_at_exit = False

    def _start(self, step: int) -> None:
        self.close()
        if self.workers and not self._closes_at_exit:
            atexit.register(self.close)  # runs before multiprocessing's exit handler (LIFO)
            self._closes_at_exit = True
        extra = {"prefetch_factor": self.prefetch, "persistent_workers": False} if self.workers else {}
        loader = DataLoader(_Steps(self.source), batch_size=None, sampler=_From(step, self.stop),
                            num_workers=self.workers, pin_memory=self.pin_memory, collate_fn=_identity,
                            worker_init_fn=_ignore_stop_signals, **extra)
        self._iter = _TakenAhead(iter(loader)) if self.workers and not self.pin_memory else iter(loader)
        self._next = step

    def step(self, step: int) -> StepBatch:
        if self._iter is None or step != self._next:
            self._start(step)
        batch = next(self._iter)
        self._next += 1
        if isinstance(batch, _Failure):
            self.close()
            raise batch.exc
        if self.agreement is not None:
            self.agreement(batch)
        return batch

    def close(self) -> None:
        """Stop the workers (the next ``step`` starts new ones)."""
        if isinstance(self._iter, _TakenAhead):
            self._iter.close()
        self._iter = None  # the last reference: DataLoader's iterator shuts its workers down
        self._next = -1


def _identity(batch):
    return batch


def _ignore_stop_signals(_worker: int) -> None:
    """The trainer answers preemption signals; a worker only dies with it."""
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def make_loader(source: ReplicaData, stop: int, device: torch.device) -> StepLoader:
    """The loader a job's ``data`` section asks for, ``source``'s steps before ``stop``."""
    job = source.job
    agreement = DecodeAgreement(job, source.replica_of, device) if decoding_can_fail(job) else None
    return StepLoader(source, stop, job.data.num_workers, job.data.prefetch, device.type == "cuda", agreement)
