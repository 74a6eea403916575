#!/usr/bin/env python3
"""Import speed and memory: a random Llama checkpoint imported at TP2 on 2 processes vs
``transformers``' ``from_pretrained`` of the same directory in 1 process, in one run.

    python3 scripts/bench_import.py                       # ~1.1B parameters (hidden 2048, 16 layers)
    python3 scripts/bench_import.py --hidden 1024 --layers 8 --vocab 32000   # a quick smaller run
    python3 scripts/bench_import.py --procs 1             # TP1 in one process (a rank with spare cores)
    python3 scripts/bench_import.py --memory warm         # each process warms its memory first (Memory, below)

The checkpoint (bf16 safetensors, as published checkpoints are) is written once into
``--dir`` (kept for reruns). Each side loads fp32 weights: ``from_pretrained(dtype=float32)``
and the provider's model (fp32 parameters; the job casts to bf16 later). Timed: the
``from_pretrained`` call, and on each rank the provider's build (model construction +
per-rank slice reads), the slowest rank counting. Memory: each rank's peak RSS growth over
the import (the job's own ``MemoryProbe``: peak reset through ``/proc/self/clear_refs``)
against the bytes of the parameters it holds. Prints the medians of ``--repeats`` alternating runs and the ratios
(targets: wall time <= 1.0x, RSS growth <= 1.25x the shard).

Each rank starts with one torch thread, as under torchrun in a GPU job; the import copies on
the rank's share of the CPUs (``runtime/parallel/cpu_threads.py``). Where that share is more
than one thread, the run also times the import held to one thread per rank
(``MIMO_CPU_THREADS=1``), alternating with the others, and prints what the threads gain
(``--no-one-thread`` skips it). Each rank starts as a job's rank does (``train.py``): its
start-up objects frozen out of the garbage collector's scans, and on a GPU machine CUDA
started before the model is built. Not timed: creating the process groups (every job does,
with or without pretrained weights; printed apart), and one read of the checkpoint's files
before each side's clock, so both start from the page cache (printed: a slow read means the
machine had dropped the file's pages). ``transformers`` runs as a plain script. Also timed,
alternating with the others: the floor, bare copies of the same bytes in the same number of
processes with no model at all, since writing fresh pages dominates on some machines and
varies with the minute; each side's multiple of the floor is what its code adds.
Both sides also report the garbage collector's time inside their clock and its full
collections, so a pause like the one found on a GPU box's profile shows in the output, and the
kernel's time per page fault (each side maps ~one fresh 4 KiB page per fault): on a VM whose
host backs reported-free memory lazily that cost is what moves with the hour, and a side whose
pages cost more than the floor's is slow for it, not for its own code (docs/bench_import.md). The
toolkit's CPU time and faults include creating its process groups (small; excluded from its
seconds).

Memory (``--memory warm``; the default, ``cold``, has no such step): right before its clock,
each process of each side (each rank, the ``transformers`` process, each floor process) writes
and frees twice the fp32 memory it is about to create (not timed; the RSS probe starts after
it). On a VM that gives freed memory back to its host (this project's VM: free page
reporting), memory is handed out at the host's cost once what the previous processes freed
has been given back; the toolkit's ranks, which import megatron-core under torchrun, start
last, and in such minutes their slower rank paid up to 1.9x the floor, which a warm-up inside
the ranks removed (docs/bench_import.md). Not the default: in quiet minutes it also moves the
ratio (0.76-0.81 warm against 0.83-0.88 cold, `transformers` slower when warmed), so it is a
diagnostic of the machine, not the measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def usage() -> dict:
    """This process's CPU seconds so far (every thread; user and kernel apart: mapping fresh
    pages is kernel time) and its minor page faults (one per fresh 4 KiB page mapped)."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": now.ru_utime, "kernel": now.ru_stime, "faults": now.ru_minflt}


def spent(before: dict) -> dict:
    """What :func:`usage` grew by since ``before``; ``cpu`` is user + kernel."""
    now = usage()
    grown = {key: now[key] - before[key] for key in now}
    return {**grown, "cpu": grown["user"] + grown["kernel"]}


class CollectorPauses:
    """Time the garbage collector ran while active, and its full (oldest-generation) runs: a
    full collection of the ~430k objects torch and megatron-core import costs ~0.2 s."""

    def __init__(self) -> None:
        self.seconds, self.full, self._start = 0.0, 0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2

    def __enter__(self) -> CollectorPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)


def read_through(path: str) -> float:
    """Read the checkpoint's files once (outside the clocks), so each side starts from the page
    cache: a VM may drop cold file pages between runs (this one pages out file pages idle for a
    minute), and a re-read from disk inside one side's clock would time the disk, not the import.
    Returns the seconds it took: ~0.1 s per GiB from the cache, seconds when it came from disk."""
    import mmap

    # A page-aligned buffer: reads into a bytearray (16 bytes off a page) ran 5x slower here.
    start, buffer = time.perf_counter(), mmap.mmap(-1, 64 << 20)
    for file in sorted(Path(path).glob("*.safetensors")):
        with open(file, "rb", buffering=0) as stream:
            while stream.readinto(buffer):
                pass
    return time.perf_counter() - start


#: Memory each side writes and frees just before its clock (``--memory warm``), as a multiple of
#: the fp32 bytes it will create: 2x is above every side's peak (`transformers` 1.50x its
#: parameters, a rank 1.05x its shard, measured).
WARM_FACTOR = 2.0


def warm_memory(path: str, parts: int) -> None:
    """Write, then free, ``WARM_FACTOR`` x this process's share of the fp32 parameters, so the
    memory its clock then allocates is memory the machine has just had in use.

    Why: on a VM that reports free memory to its host (this one: free page reporting, order 9),
    memory freed seconds ago is handed out again at the host's cost: each page it had given back
    must be backed anew. How much of the previous side's memory is still backed when a side's
    clock starts depends on how long that side took to start (a torchrun rank that imports
    megatron-core takes longest), not on its loader. Written and freed inside the same process
    right before the clock, the memory is backed for every side alike. Not neutral in quiet
    minutes (it slowed ``transformers`` ~6% there), hence a diagnostic, not the default."""
    import torch

    fp32_bytes = 2 * sum(file.stat().st_size for file in Path(path).glob("*.safetensors"))  # bf16 -> fp32
    block = torch.empty(int(WARM_FACTOR * fp32_bytes / parts) // 4, dtype=torch.float32)
    block.fill_(0.0)
    del block  # glibc returns a block this size to the kernel at once (its own mapping)


def save_checkpoint(path: Path, args) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=2048, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    print(f"wrote {path}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)


def hf_side(path: str, warm: bool) -> dict:
    """One process: transformers' from_pretrained."""
    import torch
    from transformers import LlamaForCausalLM

    from mimo_toolkit.runtime.train.memory_probe import MemoryProbe  # torch only, no megatron-core

    read = read_through(path)
    if warm:
        warm_memory(path, 1)
    probe = MemoryProbe(torch.device("cpu"))
    start, before = time.perf_counter(), usage()
    with CollectorPauses() as collector:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    seconds, cpu = time.perf_counter() - start, spent(before)
    shard = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"seconds": seconds, **cpu, "growth": probe.peak_bytes(), "shard": shard,
            "gc": collector.seconds, "full_gcs": collector.full, "read": read}


def toolkit_side(path: str, out: str, warm: bool) -> None:
    """One torchrun rank: the provider builds this rank's part and imports its slices."""
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    import torch
    import torch.distributed as dist

    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.runtime.model.provider import MimoModelProvider
    from mimo_toolkit.runtime.train.memory_probe import MemoryProbe
    from mimo_toolkit.train import freeze_startup_objects

    torch.set_num_threads(1)  # torchrun's OMP_NUM_THREADS=1 in a GPU job
    dist.init_process_group("gloo")
    if torch.cuda.is_available():  # a GPU job's rank has CUDA up before it builds its model (init_distributed)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        torch.empty(1, device="cuda")
    config = json.loads((Path(path) / "config.json").read_text())
    tp = dist.get_world_size()
    sets = [f"model.llm.pretrained={path}", "layout.mode=homogeneous", f"layout.llm.tp={tp}", f"layout.vision.tp={tp}",
            f"cluster.procs_per_node={tp}",
            f"model.llm.num_layers={config['num_hidden_layers']}", f"model.llm.hidden_size={config['hidden_size']}",
            f"model.llm.num_attention_heads={config['num_attention_heads']}",
            f"model.llm.ffn_hidden_size={config['intermediate_size']}", f"model.llm.vocab_size={config['vocab_size']}",
            "model.llm.max_sequence_length=2048"]
    job = resolve_job("llava", "tiny", sets=sets).config
    freeze_startup_objects()  # as train.py does once its imports are done
    read = read_through(path) if dist.get_rank() == 0 else 0.0
    if warm:
        warm_memory(path, dist.get_world_size())
    dist.barrier()
    probe = MemoryProbe(torch.device("cpu"))
    start, before = time.perf_counter(), usage()
    with CollectorPauses() as collector:
        provider = MimoModelProvider.from_job(job)
        provider.finalize()
        groups = time.perf_counter()
        provider.get_or_build_infra()  # the process groups: every job creates them, pretrained or not
        groups = time.perf_counter() - groups
        model = provider.provide()
    seconds, cpu = time.perf_counter() - start - groups, spent(before)
    shard = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    result = {"rank": dist.get_rank(), "seconds": seconds, "copy": provider.import_seconds["llm"], "groups": groups,
              **cpu, "growth": probe.peak_bytes(), "shard": shard,
              "gc": collector.seconds, "full_gcs": collector.full, "read": read}
    Path(out, f"rank-{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def floor_side(path: str, part: int, parts: int, threads: int, warm: bool, barrier, results) -> None:
    """One of ``parts`` processes started together: map the checkpoint's files and convert its
    1/``parts`` of every file's bf16 data into fresh fp32 memory with a plain ``copy_``, on
    ``threads`` threads. No model, no names, no layout: the least any TP import of this
    checkpoint does, on this machine, in this minute (writing fresh pages dominates here)."""
    import mmap
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", "The given buffer is not writable")
    read = read_through(path) if part == 0 else 0.0
    if warm:
        warm_memory(path, parts)
    barrier.wait()
    start, before, kept = time.perf_counter(), usage(), []
    for file in sorted(Path(path).glob("*.safetensors")):
        with open(file, "rb") as stream:
            mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        data = torch.frombuffer(mapped, dtype=torch.bfloat16, offset=8 + int.from_bytes(mapped[:8], "little"))
        lo, hi = part * data.numel() // parts, (part + 1) * data.numel() // parts
        kept.append(torch.empty(hi - lo, dtype=torch.float32).copy_(data[lo:hi]))
    seconds = time.perf_counter() - start
    results.put({"part": part, "seconds": seconds, **spent(before), "read": read})


def run_floor(path: Path, procs: int, threads: int, warm: bool) -> list[dict]:
    """``floor_side`` in ``procs`` fresh processes at once, released together by a barrier once
    their imports are done."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(procs), context.Queue()
    workers = [context.Process(target=floor_side, args=(str(path), part, procs, threads, warm, barrier, results))
               for part in range(procs)]
    for worker in workers:
        worker.start()
    parts = []
    while len(parts) < procs:
        try:
            parts.append(results.get(timeout=1))
        except queue.Empty:
            if any(worker.exitcode for worker in workers):  # a dead worker: the others wait at the barrier
                for worker in workers:
                    worker.kill()
                raise SystemExit(f"floor: a copy process failed (exit codes {[w.exitcode for w in workers]})")
    for worker in workers:
        worker.join()
    return parts


def run_hf(path: Path, warm: bool) -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(REPO / 'scripts')!r}); import bench_import as b; " \
           f"print(json.dumps(b.hf_side({str(path)!r}, {warm!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_toolkit(path: Path, procs: int, warm: bool, one_thread: bool = False) -> list[dict]:
    from mimo_toolkit.torchrun import torchrun_args  # torch-free

    paths = [str(REPO / "scripts"), str(REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    env.pop("MIMO_CPU_THREADS", None)
    if one_thread:
        env["MIMO_CPU_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as out:
        cmd = torchrun_args(python=sys.executable, nnodes=1, nproc_per_node=procs, rdzv_endpoint="localhost:0",
                            module="bench_import",  # as a job starts its ranks
                            module_args=["--worker", str(path), out, "warm" if warm else "cold"])
        # In this checkout: `python -m` (and `-c`) put the working directory FIRST on sys.path,
        # ahead of PYTHONPATH, so started elsewhere the ranks could import another checkout's code.
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank-*.json"))]


def slowest_rank(results: list[list[dict]]) -> float:
    """Median over runs of the slowest rank's seconds."""
    return statistics.median(max(r["seconds"] for r in ranks) for ranks in results)


def runs(results: list) -> str:
    return ", ".join(f"{max(r['seconds'] for r in x) if isinstance(x, list) else x['seconds']:.2f}" for x in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2, help="ranks of the toolkit's import (its TP size)")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "mimo-bench-import"))
    parser.add_argument("--one-thread", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the import held to one thread per rank (where a rank has more)")
    parser.add_argument("--memory", choices=["cold", "warm"], default="cold",
                        help="cold (default): each side's clock starts on the memory the machine hands out then; "
                             "warm: each side first writes and frees 2x the memory it will create, right before "
                             "its clock (a diagnostic for VMs that give freed memory back to their host; see "
                             "warm_memory)")
    parser.add_argument("--worker", nargs=3, metavar=("CHECKPOINT", "OUT", "MEMORY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        checkpoint, out, memory = args.worker
        return toolkit_side(checkpoint, out, memory == "warm")
    path = Path(args.dir) / f"llama-h{args.hidden}-l{args.layers}-f{args.ffn}-v{args.vocab}"
    if not (path / "config.json").exists():
        save_checkpoint(path, args)
    from mimo_toolkit.runtime.parallel.cpu_threads import usable_cpus  # torch-free

    share = max(1, usable_cpus() // args.procs)  # each rank's share, as the import computes it
    warm = args.memory == "warm"
    hf, ours, single, floor = [], [], [], []
    for _ in range(args.repeats):  # alternating, so all see the same machine
        floor.append(run_floor(path, args.procs, share, warm))
        hf.append(run_hf(path, warm))
        ours.append(run_toolkit(path, args.procs, warm))
        if share > 1 and args.one_thread:
            single.append(run_toolkit(path, args.procs, warm, one_thread=True))
    print(f"memory: {args.memory}" + (f" (each side wrote and freed {WARM_FACTOR:g}x the memory it creates, just "
                                      "before its clock)" if warm else " (no warm-up)"))
    hf_s = statistics.median(r["seconds"] for r in hf)
    ours_s = slowest_rank(ours)
    print(f"transformers from_pretrained, 1 process: {hf_s:.2f} s (runs: {runs(hf)})")
    print(f"toolkit TP{args.procs} import, {args.procs} process(es), {share} thread(s) each (slowest rank): "
          f"{ours_s:.2f} s (runs: {runs(ours)})")
    copy_s = statistics.median(max(r["copy"] for r in ranks) for ranks in ours)
    groups_s = statistics.median(max(r["groups"] for r in ranks) for ranks in ours)
    print(f"  of which reading and copying the slices: {copy_s:.2f} s; building the model: {ours_s - copy_s:.2f} s "
          f"(not counted: creating the process groups, {groups_s:.2f} s)")
    print(f"wall time ratio: {ours_s / hf_s:.2f} (target <= 1.0)")
    paired = [max(r["seconds"] for r in ranks) / h["seconds"] for ranks, h in zip(ours, hf)]
    print(f"  per repeat (the two sides a few seconds apart): {', '.join(f'{x:.2f}' for x in paired)}; "
          f"median {statistics.median(paired):.2f}")
    print(f"garbage collection inside the clock (medians): transformers {statistics.median(r['gc'] for r in hf):.3f} s, "
          f"{max(r['full_gcs'] for r in hf)} full at most; toolkit slowest rank "
          f"{statistics.median(max(r['gc'] for r in ranks) for ranks in ours):.3f} s, "
          f"{max(r['full_gcs'] for ranks in ours for r in ranks)} full at most")
    if single:
        one_s = slowest_rank(single)
        print(f"the same import on one thread per rank: {one_s:.2f} s (runs: {runs(single)}): {share} threads "
              f"{one_s / ours_s:.2f}x faster (one thread's ratio to transformers: {one_s / hf_s:.2f})")
    # Throughput per CPU second: transformers loads with a thread pool, each rank on its share.
    hf_rate = statistics.median(r["shard"] / r["cpu"] for r in hf) / 2**30
    our_rate = statistics.median(sum(r["shard"] for r in ranks) / sum(r["cpu"] for r in ranks) for ranks in ours) / 2**30
    print(f"GiB of fp32 parameters per CPU second (user + kernel): transformers {hf_rate:.2f}, toolkit {our_rate:.2f} "
          f"(ratio {hf_rate / our_rate:.2f})")
    reads = [r["read"] for r in hf] + [max(r["read"] for r in ranks) for ranks in ours + single + floor]
    print(f"checkpoint read through the page cache before each clock (not timed): median {statistics.median(reads):.2f} s, "
          f"slowest {max(reads):.2f} s (seconds there mean it came back from disk)")
    floor_s = slowest_rank(floor)
    print(f"the floor, bare copies: {args.procs} processes at once, each converting 1/{args.procs} of the checkpoint "
          f"into fresh fp32 memory with a plain copy_ on {share} thread(s), no model: {floor_s:.2f} s (runs: "
          f"{runs(floor)}); toolkit {ours_s / floor_s:.2f}x the floor, transformers {hf_s / floor_s:.2f}x")
    # The kernel's time per fresh page is what moves with the hour here (the host backing memory
    # the guest had reported free): one rank, or both, may draw dearer pages than the floor did.
    def per_page(measured: list[dict]) -> str:
        return f"{statistics.median(1e6 * r['kernel'] / max(r['faults'], 1) for r in measured):.1f}"

    slow = [max(ranks, key=lambda r: r["seconds"]) for ranks in ours]
    fast = [min(ranks, key=lambda r: r["seconds"]) for ranks in ours]
    print(f"kernel microseconds per page fault (fresh pages mapped), medians: floor "
          f"{per_page([max(parts, key=lambda r: r['seconds']) for parts in floor])}, toolkit slowest rank "
          f"{per_page(slow)} (fastest {per_page(fast)}; ranks apart by "
          f"{statistics.median(s['seconds'] - f['seconds'] for s, f in zip(slow, fast)):.2f} s), transformers {per_page(hf)}")
    for rank in range(args.procs):
        growth = statistics.median(ranks[rank]["growth"] for ranks in ours)
        shard = ours[0][rank]["shard"]
        print(f"rank {rank}: peak RSS growth {growth / 2**30:.2f} GiB for a {shard / 2**30:.2f} GiB shard: "
              f"{growth / shard:.2f}x (target <= 1.25x)")
    growth = statistics.median(r["growth"] for r in hf)
    print(f"transformers: peak RSS growth {growth / 2**30:.2f} GiB for {hf[0]['shard'] / 2**30:.2f} GiB of parameters")


if __name__ == "__main__":
    main()
