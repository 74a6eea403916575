"""Per-operation compute and wait seconds, without synchronising the device.

Each operation has three marks: ``start`` (before its boundary is posted), ``ready`` (its
inputs from other ranks are on this rank: received and, for bridge inputs, broadcast or
all-to-all'd) and ``stop``. ``ready - start`` is the operation's wait, ``stop - ready`` its
compute (collectives inside the compute, such as tensor-parallel all-reduces, count as
compute, as the planner's cost model assumes).

On CPU the marks are ``time.perf_counter()``: gloo blocks the host until data arrives. On
CUDA they are CUDA events on the current stream: NCCL's ``irecv().wait()`` only makes the
stream wait, so host clocks would book the wait as compute; the events measure when the
stream itself got past each mark. They are read once, at the end of the step.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch


class OpClock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, str, object, object, object, str]] = []

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def begin_step(self) -> None:
        self._marks.clear()

    def start(self) -> None:
        self._start = self._now()
        self._ready = None

    def ready(self) -> None:
        self._ready = self._now()

    def stop(self, module: str, phase: str, label: str = "") -> None:
        """End an operation of ``module``; ``phase`` is ``fwd`` or ``bwd``; ``label`` names
        the operation in traces."""
        ready = self._ready if self._ready is not None else self._start
        self._marks.append((module, phase, self._start, ready, self._now(), label))

    def _seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def totals(self) -> dict[str, float]:
        """``<module>/fwd|bwd|wait`` seconds of the step (waits for the device once, on CUDA)."""
        times: dict[str, float] = defaultdict(float)
        if self.cuda and self._marks:
            self._marks[-1][4].synchronize()
        for module, phase, start, ready, stop, _ in self._marks:
            times[f"{module}/wait"] += self._seconds(start, ready)
            times[f"{module}/{phase}"] += self._seconds(ready, stop)
        return times

    def spans(self) -> list[tuple[str, str, float, float]]:
        """The step's operations for ``trace.py``: ``(name, "wait"|"fwd"|"bwd", start, end)``
        in ``perf_counter`` seconds (CPU marks only; empty on CUDA)."""
        if self.cuda:
            return []
        out = []
        for _, phase, start, ready, stop, label in self._marks:
            if ready > start:
                out.append((f"wait {label}", "wait", start, ready))
            out.append((label, phase, ready, stop))
        return out
