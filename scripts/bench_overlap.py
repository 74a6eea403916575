#!/usr/bin/env python3
"""Heterogeneous overlap: an encoder and an LLM on their own processes, working concurrently.

Runs the same job twice on CPU, one thread per process:
  alone:          1 process, both modules (homogeneous layout) -> each module's step time alone
  heterogeneous:  2 processes, vision on rank 0, LLM on rank 1   -> the overlapped step time
and prints overlap = (T_encoder_alone + T_llm_alone) / T_heterogeneous_step (medians of the
timed steps). With 8 micro-batches and equal module costs the ideal is 2*8/9 = 1.78. Also
prints each module's busy and idle fraction of the heterogeneous step, and what the machine
itself costs two busy processes: the "alone" job run twice side by side (no communication
between them) gives each module's time next to a busy neighbour, and the overlap against
those times separates the schedule's losses from the machine's.

    python scripts/bench_overlap.py            # default sizes: encoder ~ LLM cost
    python scripts/bench_overlap.py --steps 20 --set model.vision.num_layers=6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.run_dir import RunDir
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
ALONE = ["layout.mode=homogeneous", "layout.llm.tp=1", "cluster.procs_per_node=1"]
HETERO = ["layout.mode=heterogeneous", "layout.vision.dp=1", "layout.vision.rank_offset=0",
          "layout.llm.tp=1", "layout.llm.dp=1", "layout.llm.rank_offset=1", "cluster.procs_per_node=2"]


def run(sets: list[str], world: int) -> list[dict]:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    resolved = resolve_job("llava", "tiny", sets=sets)
    (run_dir / "job.json").write_text(json.dumps(resolved.manifest()))
    env = {**os.environ, "MIMO_CPU_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = torchrun_args(python=sys.executable, nnodes=1, nproc_per_node=world, rdzv_endpoint="localhost:0",
                        module_args=train_args(str(run_dir / "job.json"), str(run_dir)))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"job failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return RunDir(run_dir).read_metrics()


def med(rows: list[dict], key) -> float:
    return statistics.median(key(r) for r in rows)


def work_s(row: dict, module: str) -> float:
    """A module's forward + backward seconds in one step's metrics row."""
    return row["module_time_s"][f"{module}/fwd"] + row["module_time_s"][f"{module}/bwd"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides (KEY=VALUE)")
    args = parser.parse_args()
    sets = [*EQUAL_COST, f"train.steps={args.steps + 2}", *args.set]
    alone = run([*sets, *ALONE], 1)[2:]
    het = run([*sets, *HETERO], 2)[2:]
    with ThreadPoolExecutor(2) as pool:
        side_by_side = [rows[2:] for rows in pool.map(lambda _: run([*sets, *ALONE], 1), range(2))]

    def module_s(rows: list[dict], module: str) -> float:
        return med(rows, lambda r: work_s(r, module))

    enc, llm = module_s(alone, "vision"), module_s(alone, "llm")
    enc_pair = statistics.median(module_s(rows, "vision") for rows in side_by_side)
    llm_pair = statistics.median(module_s(rows, "llm") for rows in side_by_side)
    t_het = med(het, lambda r: r["step_time_s"])
    t_alone = med(alone, lambda r: r["step_time_s"])
    print(f"8 micro-batches per step, {args.steps} timed steps, 1 thread per process")
    print(f"alone (1 process):  encoder {enc * 1000:.0f} ms + LLM {llm * 1000:.0f} ms per step "
          f"(step {t_alone * 1000:.0f} ms; encoder/LLM cost ratio {enc / llm:.2f})")
    print(f"heterogeneous (2 processes): step {t_het * 1000:.0f} ms")
    for module, solo in (("vision", enc), ("llm", llm)):
        busy = med(het, lambda r: work_s(r, module) / r["step_time_s"])
        print(f"  {module:6s} busy {busy:5.1%}  idle {1 - busy:5.1%} of the step "
              f"({busy * t_het * 1000:.0f} ms of work that takes {solo * 1000:.0f} ms alone)")
    print(f"two 1-process jobs side by side: encoder {enc_pair * 1000:.0f} ms, LLM {llm_pair * 1000:.0f} ms "
          f"({(enc_pair + llm_pair) / (enc + llm) - 1:+.0%}: the machine's cost of a busy neighbour)")
    print(f"overlap = ({enc * 1000:.0f} + {llm * 1000:.0f}) / {t_het * 1000:.0f} = {(enc + llm) / t_het:.2f} "
          f"(ideal 2*8/9 = 1.78, target >= 1.6)")
    print(f"overlap against the side-by-side times = ({enc_pair * 1000:.0f} + {llm_pair * 1000:.0f}) / "
          f"{t_het * 1000:.0f} = {(enc_pair + llm_pair) / t_het:.2f}")


if __name__ == "__main__":
    main()
