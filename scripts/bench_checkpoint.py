#!/usr/bin/env python3
"""How long training waits for a checkpoint: asynchronous save (copy to host memory, write in
the background) against a synchronous save of the same state.

Runs a ~40M-parameter llava variant (LLM 6 x 512, vocabulary 16000; homogeneous TP1 DP2 on 2
processes) with a checkpoint every 3 steps (time enough for a background write to finish),
alternately with ``train.async_save=false`` and ``true``, and reads ``checkpoint_s`` from
``metrics.jsonl``: the seconds the training thread spent in the save call (for the
asynchronous save: copying the state, and waiting for the previous save if it had not
finished). Prints the medians side by side, their ratio
(target <= 0.20), the checkpoint's size and the median step times of both runs (the
background writer shares the CPU with training).

    python scripts/bench_checkpoint.py                 # 2 rounds x 2 runs x 4 saves: ~6 minutes here
    python scripts/bench_checkpoint.py --rounds 3 --saves 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from run_support import run_job

MODEL = [
    "layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1",
    "model.llm.hidden_size=512", "model.llm.num_layers=6", "model.llm.num_attention_heads=8",
    "model.llm.ffn_hidden_size=1408", "model.llm.vocab_size=16000",
]
#: Steps between saves: time enough for a background write to finish on this machine.
EVERY = 3


def run(mode: str, saves: int, work: Path) -> tuple[list[float], list[float], int]:
    """(checkpoint_s of every save, step seconds, checkpoint bytes) of one run."""
    sets = [*MODEL, f"train.steps={EVERY * saves + 1}", f"train.save_interval={EVERY}", "train.keep_checkpoints=2",
            f"train.async_save={'true' if mode == 'async' else 'false'}"]
    _, rd = run_job("llava", sets, work / mode)
    rows = rd.read_metrics()
    latest = rd.checkpoint_dir / (rd.checkpoint_dir / "latest").read_text().strip()
    size = sum(f.stat().st_size for f in latest.iterdir())
    return [r["checkpoint_s"] for r in rows if "checkpoint_s" in r], [r["step_time_s"] for r in rows[1:]], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating sync/async run pairs (default 2)")
    parser.add_argument("--saves", type=int, default=4, help="saves per run (default 4)")
    args = parser.parse_args()
    waits: dict[str, list[float]] = {"sync": [], "async": []}
    steps: dict[str, list[float]] = {"sync": [], "async": []}
    size = 0
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        for r in range(args.rounds):
            for mode in ("sync", "async"):
                w, s, size = run(mode, args.saves, Path(tmp) / f"{r}")
                waits[mode] += w
                steps[mode] += s
                print(f"round {r + 1}, {mode}: training waited {statistics.median(w):.3f} s per save "
                      f"(median of {len(w)})", file=sys.stderr, flush=True)
    sync, stall = statistics.median(waits["sync"]), statistics.median(waits["async"])
    print(f"checkpoint: {size / 2**20:.0f} MiB (weights, masters and Adam moments of ~40M parameters), 2 ranks")
    print(f"synchronous save:   training waits {sync:.3f} s (median of {len(waits['sync'])} saves)")
    print(f"asynchronous save:  training waits {stall:.3f} s (median of {len(waits['async'])} saves)")
    print(f"stall ratio: {stall / sync:.3f} (target <= 0.20)")
    print(f"median step time: {statistics.median(steps['sync']):.3f} s with synchronous saves, "
          f"{statistics.median(steps['async']):.3f} s with the writer in the background")


if __name__ == "__main__":
    main()
