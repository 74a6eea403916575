"""When a step communicates: the CPU data-parallel wrapper starts its gradient all-reduces
during the step's last backward, bucket by bucket, with exact sums (``PortableDataParallel``,
2 gloo processes against the gradients torch computes in one process); the colocated bridge
makes no collective where every chunk stays on its rank."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.runtime.parallel import grids
from mimo_toolkit.runtime.parallel.bridge import CollectiveBridge
from mimo_toolkit.runtime.parallel.data_parallel import PortableDataParallel

WIDTH = 1024  # one Linear = 1M + 1k elements = one bucket (BUCKET_MIN_ELEMENTS = 1M)


class Net(torch.nn.Module):
    """Four layers; the first is used by micro-batch 0 only, so the armed (last) backward
    never reaches its bucket, which is the last in backward order."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH) for _ in range(4))

    def forward(self, x: torch.Tensor, microbatch: int) -> torch.Tensor:
        first = 0 if microbatch == 0 else 1
        for layer in self.layers[first:]:
            x = torch.tanh(layer(x))
        return (x ** 2).mean()


def inputs(rank: int, microbatch: int) -> torch.Tensor:
    return torch.randn(8, WIDTH, generator=torch.Generator().manual_seed(100 * rank + microbatch))


def _worker(rank: int, store: str, out: str, tied: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = Net()
    if tied:  # a tied embedding split over pipeline stages: its bucket waits for the step's end
        net.layers[2].weight.shared_embedding = True
    wrapper = PortableDataParallel(net, dist.group.WORLD)
    wrapper.zero_grad_buffer()
    net(inputs(rank, 0), 0).backward()
    wrapper.arm_grad_sync()
    net(inputs(rank, 1), 1).backward()
    started_in_backward = len(wrapper.started)
    wrapper.finish_grad_sync()
    torch.save({"buckets": len(wrapper.buckets), "started_in_backward": started_in_backward,
                "grads": [p.main_grad.clone() for p in wrapper.params]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("tied, expected_early", [(False, 3), (True, 1)])
def test_buckets_start_during_the_last_backward_and_sum_exactly(tmp_path, tied, expected_early):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), tied), nprocs=2, join=True)
    torch.manual_seed(0)
    reference = Net()
    for rank in range(2):
        for mb in range(2):
            reference(inputs(rank, mb), mb).backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["buckets"] == 4
        # buckets 0-2 fill in the last backward; bucket 3 (layer 0) is not reached by it; a
        # held bucket (tied) also holds back the ones after it: buckets start in order
        assert got["started_in_backward"] == expected_early
        for g, p in zip(got["grads"], reference.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


BRIDGE_LAYOUTS = {  # layout -> whether the forward / backward exchanges cross ranks
    "homogeneous": (("homogeneous", {"vision": dict(dp=2), "llm": dict(dp=2)}), (False, False)),
    "colocated": (("colocated", {"vision": dict(dp=2), "llm": dict(tp=2)}), (True, True)),
}


def _bridge_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    got = {}
    for key, ((mode, modules), _) in BRIDGE_LAYOUTS.items():
        layout = MimoParallelismConfig(
            module_parallelisms={n: ModuleParallelismConfig(**kw) for n, kw in modules.items()},
            deployment_mode=mode, special_token_ids={"vision": -200},
        )
        layout.finalize(2)
        _, pgcs = grids.build_all(layout, "gloo")
        bridge = CollectiveBridge(layout, pgcs, 4, 8, torch.float32, torch.device("cpu"))
        got[key] = (bridge.crosses[("fwd", "vision")], bridge.crosses[("bwd", "vision")])
    torch.save(got, f"{out}/bridge{rank}.pt")
    dist.destroy_process_group()


def test_the_bridge_exchanges_only_where_a_chunk_crosses_ranks(tmp_path):
    mp.spawn(_bridge_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"bridge{rank}.pt")
        assert got == {key: expected for key, (_, expected) in BRIDGE_LAYOUTS.items()}, (rank, got)
