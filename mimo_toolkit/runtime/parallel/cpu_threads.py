"""The node's CPUs, shared by its ranks: how many threads one rank's torch ops may use.

A CPU job computes on the CPU, so each rank takes its share for every op (``train.py``). A
GPU job keeps the launcher's one thread per rank (torchrun sets ``OMP_NUM_THREADS=1``: the
CPU only feeds the GPU) except where the CPU itself does the work: the import of pretrained
weights (``runtime/model/hf_import.py``), memory-bound copies from the mapped safetensors
files into fresh parameters. On one thread per rank those left 14 of 16 cores idle on a lent
H100 box, and `transformers`' threaded ``from_pretrained`` loaded the same checkpoint 5.1
times faster (``scripts/bench_import.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a Slurm allocation's, not the whole
    node's) where the platform has one. Torch-free: the planner's calibration reads it too."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank_cpu_share() -> int:
    """``MIMO_CPU_THREADS`` if set, else :func:`usable_cpus` divided among the node's ranks
    (torchrun's ``LOCAL_WORLD_SIZE``); at least 1."""
    if os.environ.get("MIMO_CPU_THREADS"):
        return max(1, int(os.environ["MIMO_CPU_THREADS"]))
    return max(1, usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@contextlib.contextmanager
def at_least_threads(threads: int) -> Iterator[int]:
    """Raise torch's intra-op threads to ``threads`` for the block (never lower them); restore
    them after. Yields the count in effect."""
    import torch

    before = torch.get_num_threads()
    if threads > before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
