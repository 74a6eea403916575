#!/usr/bin/env python3
"""Heterogeneous overlap: an encoder and an LLM on their own processes, working concurrently.

Runs two jobs of the same model on CPU, one thread per process:
  alone:          1 process, both modules (homogeneous layout) -> each module's step time alone
  heterogeneous:  2 processes, vision on rank 0, LLM on rank 1   -> the overlapped step time
and prints overlap = (T_encoder_alone + T_llm_alone) / T_heterogeneous_step (medians of the
timed steps) for each of ``--repeat`` runs and their median. The jobs of a run take
turns of a few seconds (the others stopped with SIGSTOP), and only steps that ran wholly
inside a turn count: on a shared VM the machine's speed drifts by tens of percent within a
minute, and an "alone" time divided by a heterogeneous time measured a minute later mixes
that drift into the ratio. With 8 micro-batches and equal module costs the ideal is
2*8/9 = 1.78 (16: 2*16/17 = 1.88). Also prints each module's busy and idle fraction of the
heterogeneous step, and what the machine itself costs two busy processes: two "alone" jobs
side by side (no communication between them), a third group in the same turns, give each
module's time next to a busy neighbour. On this VM a process computes more slowly while the
other core is busy too (on-core, not waiting: docs/runtime.md), which caps the overlap
against alone times near 1.78 / (1 + that cost). The "schedule" line splits the overlap into
the schedule's part (the busiest module's busy share of the step) and the machine's (its
work in the step against its alone time).

    python scripts/bench_overlap.py            # default sizes: encoder ~ LLM cost
    python scripts/bench_overlap.py --steps 40 --set model.vision.num_layers=9
    python scripts/bench_overlap.py --trace step.json     # + one step's timeline of both ranks
    python scripts/bench_overlap.py --microbatches 16
    python scripts/bench_overlap.py --recipe multi_encoder   # vision, audio, LLM: 3 processes
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.run_dir import RunDir
from mimo_toolkit.runtime.train.trace import TRACE_ENV, chrome_trace, read_step
from mimo_toolkit.torchrun import torchrun_args, train_args

# Sizes chosen so that the vision encoder (+projector) and the LLM cost about the same per
# micro-batch (fwd+bwd) on this CPU: checked by the "alone" line the script prints.
EQUAL_COST = [
    "train.micro_batch_size=1", "train.global_batch_size=8", "train.seq_length=96",
    "model.vision.image_size=64", "model.vision.patch_size=8", "model.vision.num_layers=7",
    "model.vision.hidden_size=128", "model.vision.ffn_hidden_size=512",
    "model.llm.num_layers=4", "model.llm.hidden_size=192", "model.llm.ffn_hidden_size=512",
    "train.save_interval=0",
]
WARMUP_STEPS = 2
TURN_S = 3.0
"""Seconds each job runs before the other takes its turn (``interleaved``), at 8 micro-batches
per step (longer steps get proportionally longer turns, up to ``MAX_TURN_S``)."""
MAX_TURN_S = 7.0
THREE_GROUP_TURN_S = 3.5
"""With the side-by-side pair as a third group, each job is stopped for two turns in a row:
7 s, under the failure board's 10 s staleness (``interleaved`` checks it)."""
ALONE = ["layout.mode=homogeneous", "layout.llm.tp=1", "cluster.procs_per_node=1"]


def start(recipe: str, sets: list[str], world: int, trace: bool = False) -> tuple[subprocess.Popen, Path]:
    """Launch one job under torchrun (its output goes to ``bench.log`` in its run dir)."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    resolved = resolve_job(recipe, "tiny", sets=sets)
    (run_dir / "job.json").write_text(json.dumps(resolved.manifest()))
    env = {**os.environ, "MIMO_CPU_THREADS": "1", "OMP_NUM_THREADS": "1", TRACE_ENV: "1" if trace else "0"}
    cmd = torchrun_args(python=sys.executable, nnodes=1, nproc_per_node=world, rdzv_endpoint="localhost:0",
                        module_args=train_args(str(run_dir / "job.json"), str(run_dir)))
    with open(run_dir / "bench.log", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), run_dir


def finished(proc: subprocess.Popen, run_dir: Path) -> list[dict]:
    """The job's metrics rows, once it has ended (exits with its log if it failed)."""
    if proc.wait():
        sys.exit(f"job failed:\n{(run_dir / 'bench.log').read_text()[-4000:]}")
    return RunDir(run_dir).read_metrics()


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun's workers and their data workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _signal_tree(proc: subprocess.Popen, sig: int) -> None:
    for pid in _process_tree(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def interleaved(groups: list[list[tuple[subprocess.Popen, Path]]], turn_s: float) -> list[list[list[dict]]]:
    """Run groups of jobs in turns of ``turn_s`` seconds, the other groups stopped (SIGSTOP),
    until all have ended; for each job, the metrics rows of the steps that ran wholly inside
    one of its group's turns, less the first of each turn (it starts on caches the other
    group filled).

    A shared VM's speed drifts by tens of percent within a minute, so an "alone" time and a
    heterogeneous time measured one after the other mix that drift into their ratio; taking
    turns every few seconds puts both under the same drift. A stopped job's heartbeats pause
    with its store (torchrun's agent is stopped too): turns stay well under the failure
    board's 10 s staleness."""
    assert turn_s * (len(groups) - 1) < 8, "a stopped job must not look dead to its failure board (10 s)"

    def live(group) -> bool:
        return any(proc.poll() is None for proc, _ in group)

    def signal_group(group, sig: int) -> None:
        for proc, _ in group:
            _signal_tree(proc, sig)

    for group in groups[1:]:
        signal_group(group, signal.SIGSTOP)
    turns: list[list[tuple[float, float]]] = [[] for _ in groups]
    k = 0
    try:
        while running := [g for g, group in enumerate(groups) if live(group)]:
            mine = running[k % len(running)]
            k += 1
            for g in running:
                if g != mine:
                    signal_group(groups[g], signal.SIGSTOP)
            signal_group(groups[mine], signal.SIGCONT)
            began = time.time()
            while live(groups[mine]) and time.time() - began < turn_s:
                time.sleep(0.05)
            turns[mine].append((began, time.time()))
    finally:
        for group in groups:
            signal_group(group, signal.SIGCONT)
    out = []
    for group, group_turns in zip(groups, turns):
        out.append([])
        for proc, run_dir in group:
            rows = finished(proc, run_dir)
            clean = []
            for began, ended in group_turns:
                inside = [r for r in rows if r["time"] - r["step_time_s"] >= began and r["time"] <= ended]
                clean += inside[1:]
            out[-1].append([r for r in clean if r["step"] > WARMUP_STEPS])
    return out


def med(rows: list[dict], key) -> float:
    return statistics.median(key(r) for r in rows)


def work_s(row: dict, module: str) -> float:
    """A module's forward + backward seconds in one step's metrics row."""
    return row["module_time_s"][f"{module}/fwd"] + row["module_time_s"][f"{module}/bwd"]


def hetero_sets(recipe: str) -> list[str]:
    """Every encoder on a rank of its own, the LLM on the last rank."""
    encoders = ["vision"] if recipe == "llava" else ["vision", "audio"]
    sets = ["layout.mode=heterogeneous", "layout.llm.tp=1", "layout.llm.dp=1",
            f"layout.llm.rank_offset={len(encoders)}", f"cluster.procs_per_node={len(encoders) + 1}"]
    for rank, enc in enumerate(encoders):
        sets += [f"layout.{enc}.dp=1", f"layout.{enc}.tp=1", f"layout.{enc}.rank_offset={rank}"]
    return sets


def write_trace(run_dir: Path, rows: list[dict], path: str, labels: dict[int, str]) -> None:
    """The step of median time as a Chrome trace, and each rank's busy/wait/phase totals."""
    ordered = sorted(rows, key=lambda r: r["step_time_s"])
    step = ordered[len(ordered) // 2]["step"]
    spans = read_step(run_dir, step)
    Path(path).write_text(json.dumps(chrome_trace(spans, labels)))
    print(f"trace of step {step} ({ordered[len(ordered) // 2]['step_time_s'] * 1000:.0f} ms) written to {path}")
    for rank, rank_spans in sorted(spans.items()):
        totals: dict[str, float] = {}
        for name, category, start, end in rank_spans:
            key = name if category == "step" else category
            totals[key] = totals.get(key, 0.0) + (end - start) * 1000
        print(f"  {labels.get(rank, rank)}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in totals.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30,
                        help="steps per job after 2 warm-up steps (those wholly inside a turn are timed)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each an alone, a heterogeneous and (8 micro-batches) a side-by-side pair of jobs taking turns (the overlap is their median)")
    parser.add_argument("--microbatches", type=int, default=8, help="micro-batches per step")
    parser.add_argument("--recipe", choices=("llava", "multi_encoder"), default="llava",
                        help="multi_encoder: vision, audio and LLM on 3 processes")
    parser.add_argument("--trace", metavar="FILE", help="write one heterogeneous step as a Chrome trace JSON")
    parser.add_argument("--no-side-by-side", action="store_true", help="skip the busy-neighbour measurement")
    parser.add_argument("--set", action="append", default=[], help="extra overrides (KEY=VALUE)")
    args = parser.parse_args()
    m = args.microbatches
    sets = [*EQUAL_COST, f"train.global_batch_size={m}", f"train.steps={args.steps + WARMUP_STEPS}", *args.set]
    encoders = ["vision"] if args.recipe == "llava" else ["vision", "audio"]
    modules = [*encoders, "llm"]

    def module_s(rows: list[dict], module: str) -> float:
        return med(rows, lambda r: work_s(r, module))

    turn_s = min(MAX_TURN_S, TURN_S * max(1.0, m / 8))
    # A third group stops each job for two turns in a row: only where turns are short enough
    # for the failure board (longer steps need longer turns to leave whole steps inside).
    wanted = not args.no_side_by_side and args.recipe == "llava"
    neighbours = wanted and turn_s <= THREE_GROUP_TURN_S
    if wanted and not neighbours:
        print(f"(side by side skipped: {turn_s:.0f} s turns; it is measured at 8 micro-batches)")
    alones, hets, pairs = [], [], []
    for k in range(args.repeat):  # runs: alone, heterogeneous (and two alone side by side) taking turns
        trace = k == 0 and bool(args.trace)
        groups = [[start(args.recipe, [*sets, *ALONE], 1)],
                  [start(args.recipe, [*sets, *hetero_sets(args.recipe)], len(encoders) + 1, trace)]]
        if neighbours:
            groups.append([start(args.recipe, [*sets, *ALONE], 1) for _ in range(2)])
        (alone,), (het,), *pair = interleaved(groups, turn_s)
        alones.append(alone)
        hets.append(het)
        pairs.append(pair[0] if pair else None)
        if trace:
            labels = {r: f"rank {r}: {name}" for r, name in enumerate(modules)}
            write_trace(groups[1][0][1], het, args.trace, labels)

    solos = [{name: module_s(alone, name) for name in modules} for alone in alones]
    totals = [sum(solo.values()) for solo in solos]
    t_hets = [med(rows, lambda r: r["step_time_s"]) for rows in hets]
    overlaps = [total / t for total, t in zip(totals, t_hets)]
    middle = sorted(range(args.repeat), key=lambda k: overlaps[k])[args.repeat // 2]  # the median run
    solo, t_het, het = solos[middle], t_hets[middle], hets[middle]
    stages = len(encoders) + 1
    print(f"{args.recipe}: {m} micro-batches per step, 1 thread per process, jobs taking {turn_s:.1f} s turns")
    neighbour_overlaps = []
    for k in range(args.repeat):
        line = (f"run {k + 1}: alone (1 process, {len(alones[k])} steps) "
                + " + ".join(f"{n} {t * 1000:.0f}" for n, t in solos[k].items())
                + f" = {totals[k] * 1000:.0f} ms; heterogeneous ({stages} processes, {len(hets[k])} steps) "
                f"step {t_hets[k] * 1000:.0f} ms; overlap {overlaps[k]:.2f}")
        if pairs[k] is not None:
            # Each module's time next to a busy neighbour: two alone jobs side by side.
            beside = {n: statistics.median(module_s(rows, n) for rows in pairs[k]) for n in modules}
            neighbour_overlaps.append(sum(beside.values()) / t_hets[k])
            line += ("; side by side " + ", ".join(f"{n} {beside[n] / solos[k][n] - 1:+.0%}" for n in modules)
                     + f" -> overlap against those {neighbour_overlaps[-1]:.2f}")
        print(line)
    print(f"median run ({middle + 1}):")
    busy = {module: med(het, lambda r: work_s(r, module) / r["step_time_s"]) for module in modules}
    for module, alone_s in solo.items():
        print(f"  {module:6s} busy {busy[module]:5.1%}  idle {1 - busy[module]:5.1%} of the step "
              f"({busy[module] * t_het * 1000:.0f} ms of work that takes {alone_s * 1000:.0f} ms alone)")
    # overlap = busy share of the busiest module x (alone total / its alone time) / its slowdown
    # in the step: the first factor is the schedule's, the last the machine's.
    bottleneck = max(modules, key=lambda n: busy[n])
    slowdown = busy[bottleneck] * t_het / solo[bottleneck]
    # Encoders run side by side on their own ranks: one pipeline stage ahead of the LLM.
    print(f"  schedule: {bottleneck} busy {busy[bottleneck]:.1%} of the step (a perfect {m}-micro-batch pipeline: "
          f"{m / (m + 1):.1%}); machine: its work {slowdown:.2f}x its alone time; at alone speed "
          f"this schedule's overlap would be {sum(solo.values()) * busy[bottleneck] / solo[bottleneck]:.2f}")
    ideal = stages * m / (m + stages - 1) if args.recipe == "llava" else None
    print("overlap: " + ", ".join(f"{o:.2f}" for o in overlaps) + f"; median {statistics.median(overlaps):.2f}"
          + (f" (ideal 2*{m}/{m + 1} = {ideal:.2f}, target >= 1.6)" if ideal else ""))
    if neighbour_overlaps:
        print("overlap against the side-by-side times (the machine's cost of a busy neighbour taken out): "
              + ", ".join(f"{o:.2f}" for o in neighbour_overlaps) + f"; median {statistics.median(neighbour_overlaps):.2f}")


if __name__ == "__main__":
    main()
