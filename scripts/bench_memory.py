#!/usr/bin/env python3
"""Is the planner's memory model honest? Its per-rank prediction against the measured peak.

Every layout below trains a ~25M-parameter llava variant (LLM 4 x 512 with a 8000-token
vocabulary, ViT 4 x 256 on 64x64 images, 256-token samples) for a few steps on this machine
(torchrun, gloo, fp32). The runtime reports each rank's peak memory in ``metrics.jsonl``
(``peak_memory_bytes``: on CPU the growth of the process's peak resident set from just before
the model is built; ``runtime/train/memory_probe.py``). The jobs run with glibc's mmap
threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``): every tensor larger than that gets
its own mapping and leaves the resident set when freed, so the resident set follows the live
bytes, as the GPU allocator's statistics do (with glibc's adaptive threshold, freed
activations stay in the heap and the resident set of a 1-process run stays ~270 MiB above its
live bytes after the first step). The prediction is the planner's own
(``planner.memory.rank_memory``: weights, gradients, optimizer state with or without the
distributed optimizer, activations with the job's recompute modes) plus ONE fitted constant,
the per-process bytes the model does not describe (allocator arenas, gloo buffers, lazily
loaded code), taken from the FIT layouts, which are printed and not scored. Every scored
layout's ranks must be within 20%.

Then activation recompute in numbers: the measured peak of a step with and without it, for
the tiny preset and a ~100M-parameter LLM (one process each).

    python scripts/bench_memory.py                   # ~15 minutes on a busy 2-core machine
    python scripts/bench_memory.py --skip-recompute  # the layout table only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from run_support import run_job

from mimo_toolkit.planner.hardware import Machine
from mimo_toolkit.planner.memory import rank_memory
from mimo_toolkit.planner.workload import make_problem

MIB = 2**20
#: The memory model reads only the machine's name (cpu: local layers, the CPU optimizer step).
CPU = Machine("cpu", peak_flops=None, memory_gib=24, efficiency=1.0, memory_bytes_per_s=1.0,
              intra_node_bytes_per_s=1.0, inter_node_bytes_per_s=1.0, latency_s=0.0)
MODEL = [
    "model.llm.hidden_size=512", "model.llm.num_layers=4", "model.llm.num_attention_heads=8",
    "model.llm.ffn_hidden_size=1408", "model.llm.vocab_size=8000", "model.llm.max_sequence_length=256",
    "model.vision.hidden_size=256", "model.vision.num_layers=4", "model.vision.ffn_hidden_size=1024",
    "model.vision.image_size=64", "train.seq_length=256", "train.global_batch_size=8", "train.micro_batch_size=2",
    "train.save_interval=0", "train.steps=3",
]
HOMOGENEOUS = ["layout.mode=homogeneous", "layout.vision.tp=1"]
ONE_PROCESS = [*HOMOGENEOUS, "layout.llm.tp=1", "cluster.procs_per_node=1"]
SHARDED = "train.distributed_optimizer=true"
FULL = ["train.recompute.llm=full", "train.recompute.vision=full"]

#: Layouts whose measurement fits the per-process constant (never scored).
FIT = [("1 process (fit)", ONE_PROCESS)]
#: Held-out layouts: each rank's prediction must be within 20% of its measurement.
SCORED = [
    ("homogeneous tp1 dp2", [*HOMOGENEOUS, "layout.llm.tp=1"]),
    ("homogeneous tp1 dp2, distributed optimizer", [*HOMOGENEOUS, "layout.llm.tp=1", SHARDED]),
    ("colocated llm tp2 + vision dp2", []),
    ("colocated llm tp2 + vision dp2, full recompute", FULL),
    ("colocated llm pp2 + vision dp2, distributed optimizer", ["layout.llm.tp=1", "layout.llm.pp=2", SHARDED]),
    ("heterogeneous vision[0] llm[1]", ["layout.mode=heterogeneous", "layout.vision.dp=1", "layout.llm.tp=1",
                                        "layout.llm.dp=1", "layout.llm.rank_offset=1"]),
    ("homogeneous tp2, selective recompute", [*HOMOGENEOUS, "layout.vision.tp=2", "layout.llm.tp=2",
                                              "train.recompute.llm=selective", "train.recompute.vision=selective"]),
    ("1 process, full recompute", [*ONE_PROCESS, *FULL]),
]


@dataclass
class Measured:
    name: str
    predicted: list[float]
    """The planner's bytes per rank (no per-process constant)."""
    measured: list[float]


def measure(name: str, sets: list[str], work: Path) -> Measured:
    """Train the llava tiny preset with ``sets``; the planner's and the measured bytes per rank."""
    resolved, rd = run_job("llava", sets, work, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    job = resolved.config
    problem = make_problem(job, CPU, 1, resolved.world_size)
    predicted = [rank_memory(problem, job.layout, r, job.train.micro_batch_size, job.train.recompute).total
                 for r in range(resolved.world_size)]
    last = rd.read_metrics()[-1]["peak_memory_bytes"]
    measured = [float(last[str(r)]) for r in range(resolved.world_size)]
    print(f"  {name}: measured {' '.join(f'{m / MIB:.0f}' for m in measured)} MiB, model "
          f"{' '.join(f'{p / MIB:.0f}' for p in predicted)} MiB", file=sys.stderr, flush=True)
    return Measured(name, predicted, measured)


def layout_table(work: Path) -> float:
    """The held-out layouts' table; returns the fitted per-process constant."""
    fits = [measure(n, [*MODEL, *s], work / f"fit-{i}") for i, (n, s) in enumerate(FIT)]
    overhead = statistics.median(m - p for f in fits for m, p in zip(f.measured, f.predicted))
    scored = [measure(n, [*MODEL, *s], work / f"scored-{i}") for i, (n, s) in enumerate(SCORED)]
    print(f"per-process constant fitted on: {', '.join(f.name for f in fits)} = {overhead / MIB:.1f} MiB")
    print(f"\n{'layout (held out)':54s} {'rank':>4s} {'predicted':>10s} {'measured':>10s} {'error':>7s}")
    worst = 0.0
    for row in scored:
        for rank, (p, m) in enumerate(zip(row.predicted, row.measured)):
            error = (p + overhead) / m - 1
            worst = max(worst, abs(error))
            print(f"{row.name:54s} {rank:>4d} {(p + overhead) / MIB:8.0f}Mi {m / MIB:8.0f}Mi {error:+7.1%}")
    print(f"\n{len(scored)} held-out layouts, largest error {worst:.1%} (target 20%)")
    return overhead


RECOMPUTE_MODELS = [
    ("tiny preset", [*ONE_PROCESS, "train.steps=3", "train.save_interval=0"]),
    ("~100M LLM (12 x 768, vocabulary 16000)", [
        *ONE_PROCESS, "model.llm.hidden_size=768", "model.llm.num_layers=12", "model.llm.num_attention_heads=12",
        "model.llm.ffn_hidden_size=2048", "model.llm.vocab_size=16000", "model.llm.max_sequence_length=512",
        "train.seq_length=512", "train.global_batch_size=2", "train.micro_batch_size=1", "train.steps=2",
        "train.save_interval=0"]),
]


def recompute_table(work: Path, overhead: float) -> None:
    """Measured peak of a step with each recompute mode (and the model's, with the constant)."""
    print(f"\n{'model (1 process)':42s} {'recompute':>10s} {'peak':>9s} {'model':>9s}")
    for i, (name, sets) in enumerate(RECOMPUTE_MODELS):
        for mode in ("none", "selective", "full"):
            row = measure(f"{name}, {mode}", [*sets, f"train.recompute.llm={mode}", f"train.recompute.vision={mode}"],
                          work / f"recompute-{i}-{mode}")
            predicted = row.predicted[0] + overhead
            print(f"{name:42s} {mode:>10s} {row.measured[0] / MIB:7.0f}Mi {predicted / MIB:7.0f}Mi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-recompute", action="store_true", help="only the layout table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        overhead = layout_table(Path(tmp))
        if not args.skip_recompute:
            recompute_table(Path(tmp), overhead)


if __name__ == "__main__":
    main()
