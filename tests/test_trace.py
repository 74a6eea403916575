"""The step trace (``runtime/train/trace.py``): spans written per rank, read back per step,
and turned into a Chrome trace a viewer opens (one process per rank, phases and operations
on their own rows, times from the earliest span)."""

from __future__ import annotations

import json

from mimo_toolkit.runtime.train.trace import TRACE_ENV, StepTrace, chrome_trace, read_step


def test_spans_round_trip_into_a_chrome_trace(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACE_ENV, "1")
    for rank, shift in ((0, 0.0), (1, 0.5)):
        trace = StepTrace(tmp_path, rank)
        for step in (1, 2):
            trace.phase("forward/backward")
            trace.extend([("F(vision,0)", "fwd", 10.0 + shift + step, 10.25 + shift + step)])
            trace.phase("optimizer")
            trace.flush(step)
    spans = read_step(tmp_path, 2)
    assert sorted(spans) == [0, 1]
    assert sorted(s[0] for s in spans[0]) == ["F(vision,0)", "forward/backward", "optimizer"]

    events = json.loads(json.dumps(chrome_trace(spans, {0: "rank 0: vision"})))["traceEvents"]
    ops = [e for e in events if e["ph"] == "X" and e["cat"] == "fwd"]
    assert [(e["pid"], e["tid"], e["dur"]) for e in ops] == [(0, 1, 250000.0), (1, 1, 250000.0)]
    assert ops[1]["ts"] - ops[0]["ts"] == 500000.0 and min(e["ts"] for e in events if e["ph"] == "X") == 0.0
    phases = [e for e in events if e["ph"] == "X" and e["cat"] == "step"]
    assert {e["tid"] for e in phases} == {0} and all(e["dur"] >= 0 for e in phases)
    names = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name"}
    assert names == {(0, "rank 0: vision"), (1, "rank 1")}


def test_off_by_default_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(TRACE_ENV, raising=False)
    trace = StepTrace(tmp_path, 0)
    trace.phase("optimizer")
    trace.extend([("F(llm,0)", "fwd", 1.0, 2.0)])
    trace.flush(1)
    assert not (tmp_path / "trace").exists() and trace.spans == []
