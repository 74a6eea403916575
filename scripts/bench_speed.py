#!/usr/bin/env python3
"""Speed fixes of issue #16 part 4, measured on CPU: before (``--baseline DIR``, an older
checkout of this repository) and after (this one), side by side, alternating run by run.

    loss   the vocabulary-parallel cross-entropy, forward + backward, one micro-batch of
           2048 tokens x 32000 vocabulary (fp32 and bf16 logits): seconds and peak memory
    init   start-up of a ~1B LLM (2048 hidden, 16 layers, 32000 vocabulary) at TP2 on two
           processes: each rank's seconds in the provider's ``provide()`` and its peak memory
    step   a colocated training step with a 32000 vocabulary (LLM TP2, vision DP2, 2
           processes): median step time and the peak memory of the largest rank
    data   one process training on LLaVA-style JSON with 224 px PNG images (the shapes task):
           median step time with the images decoded in the step (``data.num_workers=0``) and
           in 2 worker processes (this checkout only: the baseline has no workers)

Each figure is the median over ``--repeats`` runs, each a fresh process (peak memory is its
``ru_maxrss`` less what it held before the measured part: the loss's and init's own peak;
the step's whole process). The machine this runs on may be shared: run it on a quiet one for
figures that go into the README.

    git archive 46dbf2c | (mkdir -p /tmp/base && tar -x -C /tmp/base)   # before issue #16
    python scripts/bench_speed.py --baseline /tmp/base            # all four
    python scripts/bench_speed.py loss init --repeats 5           # this checkout only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
INIT_SETS = ["model.llm.hidden_size=2048", "model.llm.num_layers=16", "model.llm.ffn_hidden_size=5632",
             "model.llm.num_attention_heads=16", "model.llm.vocab_size=32000", "train.seq_length=128",
             "layout.mode=homogeneous", "layout.llm.tp=2", "layout.vision.tp=2"]  # homogeneous: one TP for all
STEP_SETS = ["model.llm.vocab_size=32000", "model.llm.hidden_size=256", "model.llm.ffn_hidden_size=512",
             "train.seq_length=256", "model.llm.max_sequence_length=256", "train.micro_batch_size=4", "train.global_batch_size=16",
             "train.steps=8", "train.save_interval=0"]
DATA_SETS = ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1", "cluster.procs_per_node=1",
             "model.vision.image_size=224", "model.vision.patch_size=32", "train.seq_length=96",
             "train.micro_batch_size=4", "train.global_batch_size=16", "train.steps=8", "train.save_interval=0"]


# ---- measured parts (run in child processes, on the tree given by PYTHONPATH) -------------------


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_loss(dtype_name: str) -> dict:
    import torch
    import torch.distributed as dist

    from mimo_toolkit.runtime.parallel.loss import vocab_parallel_cross_entropy

    dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/pg", rank=0, world_size=1)
    group = dist.new_group([0])
    dtype = getattr(torch, dtype_name)
    logits = torch.randn(2048, 1, 32000, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_()
    target = torch.randint(0, 32000, (2048, 1), generator=torch.Generator().manual_seed(1))
    before = _rss_mib()
    start = time.perf_counter()
    loss = vocab_parallel_cross_entropy(logits, target, 32000, group)
    loss.sum().backward()
    return {"seconds": time.perf_counter() - start, "peak_mib": _peak_mib() - before}


def child_init() -> dict:
    """One rank of the TP2 start-up (under torchrun)."""
    os.environ["TORCH_COMPILE_DISABLE"] = "1"
    import torch.distributed as dist

    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.runtime.model.provider import MimoModelProvider

    dist.init_process_group("gloo")
    job = resolve_job("llava", "tiny", sets=INIT_SETS).config
    provider = MimoModelProvider.from_job(job)
    provider.finalize()
    provider.get_or_build_infra()
    before = _rss_mib()
    start = time.perf_counter()
    provider.provide()
    out = {"seconds": time.perf_counter() - start, "peak_mib": _peak_mib() - before}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, out)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"seconds": max(g["seconds"] for g in gathered),
                                      "peak_mib": max(g["peak_mib"] for g in gathered)}))
    dist.destroy_process_group()
    return {}


# ---- driving: fresh processes, alternating trees -------------------------------------------------


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MIMO_CPU_THREADS": "1"}


def _result(proc: subprocess.CompletedProcess) -> dict:
    if proc.returncode:
        sys.exit(f"measurement failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def run_child(tree: Path, what: str, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", what, *args]
    return _result(subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=tree))


def run_init(tree: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d",
           "--rdzv-endpoint=localhost:0", __file__, "--child", "init"]
    return _result(subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=tree))


def run_training(tree: Path, sets: list[str], procs: int) -> dict:
    """A real job through torchrun on ``tree``: median step (after 2 warm-up steps), peak RSS
    of its largest process. The job is resolved by ``tree`` itself (its config fields)."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    resolve = ("import json, sys; from mimo_toolkit.resolve import resolve_job; "
               "open(sys.argv[1], 'w').write(json.dumps(resolve_job('llava', 'tiny', sets=sys.argv[2:]).manifest()))")
    subprocess.run([sys.executable, "-c", resolve, str(run_dir / "job.json"), *sets], check=True, env=_env(tree), cwd=tree)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}", "--rdzv-backend=c10d",
           "--rdzv-endpoint=localhost:0", "-m", "mimo_toolkit.train", "--config", str(run_dir / "job.json"),
           "--run-dir", str(run_dir)]
    script = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
              "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True, env=_env(tree), cwd=tree)
    if proc.returncode:
        sys.exit(f"training run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    peak = float([x for x in proc.stdout.splitlines() if x.startswith("PEAK")][-1].split()[1])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"seconds": statistics.median(r["step_time_s"] for r in rows[2:]), "peak_mib": peak}


def shapes_data(work: Path) -> list[str]:
    out = work / "shapes"
    if not out.exists():
        subprocess.run([sys.executable, str(HERE / "scripts/make_shapes_dataset.py"), "--out", str(out),
                        "--train", "256", "--valid", "16", "--image-size", "224"], check=True, capture_output=True)
    return ["data.source=llava", f"data.path={out / 'train.json'}"]


def compare(name: str, measures: dict, repeats: int) -> None:
    """Run each of ``measures`` (label -> callable) ``repeats`` times, alternating; print
    medians, and the ratio of the last to the first."""
    results: dict[str, list[dict]] = {label: [] for label in measures}
    for _ in range(repeats):
        for label, measure in measures.items():
            results[label].append(measure())
    med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in results.items()}
    line = "  ".join(f"{label}: {m['seconds'] * 1000:7.1f} ms {m['peak_mib']:6.0f} MiB" for label, m in med.items())
    ratio = ""
    if len(med) > 1:
        (first, a), (last, b) = list(med.items())[0], list(med.items())[-1]
        ratio = f"  | {last} / {first}: time {b['seconds'] / a['seconds']:.2f}, memory {b['peak_mib'] / max(a['peak_mib'], 1):.2f}"
    print(f"{name}\n    {line}{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="*", default=["loss", "init", "step", "data"],
                        help="loss, init, step, data (default: all)")
    parser.add_argument("--baseline", type=Path, help="a checkout to compare with (e.g. from git archive)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = {"before": args.baseline.resolve(), "after": HERE} if args.baseline else {"after": HERE}
    for tree in [t for t in trees.values() if t != HERE]:  # from git archive: recipes/, templates/ as installed
        for part in ("recipes", "templates"):
            if not (tree / "mimo_toolkit" / part).exists():
                (tree / "mimo_toolkit" / part).symlink_to(tree / part)
    print(f"medians of {args.repeats} runs each, alternating; 1 thread per process; {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f} at the start)")
    work = Path(tempfile.mkdtemp(prefix="bench-speed-data-"))
    # this checkout's data path in the training process, so that "step" compares the step itself
    inline = {"before": [], "after": ["data.num_workers=0"]}
    for what in args.what:
        if what == "loss":
            for dtype in ("float32", "bfloat16"):
                compare(f"loss fwd+bwd, 2048 tokens x 32000 vocabulary, {dtype} logits",
                        {k: lambda t=t, d=dtype: run_child(t, "loss", d) for k, t in trees.items()}, args.repeats)
        elif what == "init":
            compare("init of a ~1B LLM at TP2: provide() on each rank (slowest rank, largest peak)",
                    {k: lambda t=t: run_init(t) for k, t in trees.items()}, args.repeats)
        elif what == "step":
            compare("colocated training step, vocabulary 32000, LLM TP2 + vision DP2 (2 processes)",
                    {k: lambda t=t, k=k: run_training(t, [*STEP_SETS, *inline[k]], 2) for k, t in trees.items()},
                    args.repeats)
        elif what == "data":
            sets = [*DATA_SETS, *shapes_data(work)]
            compare("LLaVA JSON, 224 px PNG images, 1 process: images decoded in the step vs in 2 workers",
                    {f"after, {n} workers": lambda n=n: run_training(HERE, [*sets, f"data.num_workers={n}"], 1)
                     for n in (0, 2)}, args.repeats)
        else:
            parser.error(f"unknown measurement {what!r}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        result = child_init() if sys.argv[2] == "init" else child_loss(*sys.argv[3:])
        if result:
            print("RESULT " + json.dumps(result))
    else:
        main()
