"""Time gloo all-reduces between this machine's processes, as training meets them.

A torchrun worker for ``mimo-toolkit calibrate`` (``measure.measure_comm`` starts it)::

    python -m torch.distributed.run --nproc-per-node 2 -m mimo_toolkit.planner.commbench OUT.json

Each rank alternates a short burst of compute with an all-reduce, so that the ranks reach each
collective slightly apart and idle in between, as they do in a training step, and the MEAN
seconds per all-reduce (not the median) is kept: a step pays every collective's jitter. Rank
0 writes ``{"ranks": N, "allreduce": [[bytes, seconds], ...]}``. torch is imported only inside
:func:`main`: the planner itself stays pure Python.
"""

from __future__ import annotations

import json
import sys
import time

#: (message bytes, repetitions): one the size of a tiny model's activations, one of its gradients.
SIZES = ((64 << 10, 300), (4 << 20, 40))
#: Matmuls of 128 x 128 between collectives (~0.1 ms per rank on one core).
BURST = 3


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    out_path = (argv if argv is not None else sys.argv[1:])[0]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    a = torch.randn(128, 128)
    results = []
    for nbytes, reps in SIZES:
        x = torch.ones(nbytes // 4)
        for _ in range(5):  # connection set-up, allocator
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
        results.append([nbytes, mean.item()])
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"ranks": dist.get_world_size(), "allreduce": results}, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
