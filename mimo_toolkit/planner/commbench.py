"""Time gloo all-reduces between this machine's processes, as training meets them.

A torchrun worker for ``mimo-toolkit calibrate`` (``measure.measure_comm`` starts it)::

    python -m torch.distributed.run --nproc-per-node 2 -m mimo_toolkit.planner.commbench OUT.json

Each rank alternates a short burst of compute with an all-reduce, so that the ranks reach each
collective slightly apart and idle in between, as they do in a training step, and the MEAN
seconds per all-reduce (not the median) is kept: a step pays every collective's jitter; of
``ROUNDS`` such means per size, the median. Rank 0 writes ``{"ranks": N, "allreduce": [[bytes, seconds], ...]}``. torch is imported only inside
:func:`main`: the planner itself stays pure Python.
"""

from __future__ import annotations

import json
import sys
import time

#: (message bytes, repetitions): one the size of a tiny model's activations, one of its gradients.
SIZES = ((64 << 10, 200), (4 << 20, 25))
#: Rounds over the sizes; the median round is kept (a round can meet a burst of other load).
ROUNDS = 3
#: Matmuls of 128 x 128 between collectives (~0.4 ms per rank on one core, a layer's worth).
BURST = 10


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    out_path = (argv if argv is not None else sys.argv[1:])[0]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    a = torch.randn(128, 128)
    means: dict[int, list[float]] = {nbytes: [] for nbytes, _ in SIZES}
    for _ in range(ROUNDS):
        for nbytes, reps in SIZES:
            means[nbytes].append(_mean_allreduce_s(torch, dist, a, nbytes, reps))
    results = [[nbytes, sorted(values)[len(values) // 2]] for nbytes, values in means.items()]
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"ranks": dist.get_world_size(), "allreduce": results}, f)
    dist.destroy_process_group()
    return 0


def _mean_allreduce_s(torch, dist, a, nbytes: int, reps: int) -> float:
    """Mean seconds of an all-reduce of ``nbytes`` between bursts of compute (slowest rank)."""
    x = torch.ones(nbytes // 4)
    for _ in range(3):  # connection set-up, allocator
        dist.all_reduce(x)
    spent = 0.0
    dist.barrier()
    for _ in range(reps):
        for _ in range(BURST):
            a @ a
        start = time.perf_counter()
        dist.all_reduce(x)
        spent += time.perf_counter() - start
    mean = torch.tensor([spent / reps], dtype=torch.float64)
    dist.all_reduce(mean, op=dist.ReduceOp.MAX)
    return mean.item()


if __name__ == "__main__":
    sys.exit(main())
