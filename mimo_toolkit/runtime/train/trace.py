"""Where a step's time goes on each rank: a timeline of its phases, for a trace viewer.

With ``MIMO_TRACE=1`` in the environment every rank appends, per step, the spans of its
phases (each operation's wait and compute, the gradient sync, the consensus, the optimizer,
the metrics) to ``<run dir>/trace/rank<r>.jsonl``. Times are ``time.perf_counter()``
seconds, one monotonic clock shared by the processes of a machine, so the ranks of a
single-node run line up. :func:`chrome_trace` turns one step of every rank into the Chrome
trace format (``chrome://tracing``, https://ui.perfetto.dev): ``scripts/bench_overlap.py
--trace FILE`` writes it. Off (the default) the trainer records nothing.

On CUDA the operation spans are host times (when the host issued the work), not device
times; the trace is a CPU tool.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TRACE_ENV = "MIMO_TRACE"


class StepTrace:
    """Spans ``(name, category, start, end)`` of one rank's current step."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.enabled = os.environ.get(TRACE_ENV) == "1"
        self.path = Path(run_dir) / "trace" / f"rank{rank}.jsonl"
        self.spans: list[tuple[str, str, float, float]] = []
        self._phase: tuple[str, float] | None = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def phase(self, name: str) -> None:
        """End the open phase (if any) and open ``name`` (None: just end it)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._phase is not None:
            self.spans.append((self._phase[0], "step", self._phase[1], now))
        self._phase = (name, now) if name else None

    def extend(self, spans: list[tuple[str, str, float, float]]) -> None:
        if self.enabled:
            self.spans.extend(spans)

    def flush(self, step: int) -> None:
        """Write the step's spans (one JSON line) and start the next step."""
        if not self.enabled:
            return
        self.phase(None)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "spans": self.spans}) + "\n")
        self.spans = []


def read_step(run_dir: Path, step: int) -> dict[int, list[list]]:
    """Every rank's spans of ``step`` (as written by :meth:`StepTrace.flush`)."""
    out = {}
    for path in sorted((Path(run_dir) / "trace").glob("rank*.jsonl")):
        rank = int(path.stem[len("rank"):])
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["step"] == step:
                out[rank] = row["spans"]
    return out


def chrome_trace(spans_by_rank: dict[int, list[list]], labels: dict[int, str] | None = None) -> dict:
    """Chrome trace JSON (``traceEvents``): one process per rank, its step phases on one row
    and its operations (wait, forward, backward) on another; microseconds from the earliest
    span of any rank."""
    origin = min(s[2] for spans in spans_by_rank.values() for s in spans)
    events = []
    for rank, spans in sorted(spans_by_rank.items()):
        name = (labels or {}).get(rank, f"rank {rank}")
        events.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": name}})
        events += [{"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": what}}
                   for tid, what in ((0, "step phases"), (1, "operations"))]
        for span_name, category, start, end in spans:
            events.append({"name": span_name, "cat": category, "ph": "X", "pid": rank, "tid": int(category != "step"),
                           "ts": round((start - origin) * 1e6, 1), "dur": round((end - start) * 1e6, 1)})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
