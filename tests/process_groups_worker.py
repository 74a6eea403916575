"""Run under torchrun (4 ranks, gloo) by test_gpu_path.py: the runtime's process groups, checked
against megatron-core 0.16.1's own DDP validation.

For each layout every rank builds the groups exactly as ``MimoModelProvider.build_infra`` does
(``grids.build_all``), then, for each module it takes part in:

* megatron-core's ``ProcessGroupCollection.setup_process_groups_for_ddp`` (what its
  ``DistributedDataParallel.__init__`` calls first) accepts the collection and creates no
  group of its own (a group created there is a collective only the wrapping ranks reach);
* each group it returns holds exactly the ranks the layout's coordinates say (computed here
  independently of HyperCommGrid);
* every group has the job's timeout (a subgroup created without one gets torch's default);
* every role where the rank is alone, in every module, shares ONE single-rank group (each group
  created is a communicator, and on gloo a transport thread).

Finally every rank must have created the same number of groups (the fixed global order), and
the p2p channels get the timeout too. Any failed check raises: torchrun exits non-zero.
"""

from __future__ import annotations

import datetime
import os

from mimo_toolkit.runtime.eager import run_eagerly

run_eagerly()  # before megatron-core is imported

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core.distributed import DistributedDataParallelConfig  # noqa: E402
from megatron.core.process_groups_config import ProcessGroupCollection  # noqa: E402

from mimo_toolkit.layout import GRID_DIMS, MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.recipes.llava import tiny_llm, tiny_vision
from mimo_toolkit.runtime.model.specs import transformer_config
from mimo_toolkit.runtime.parallel import grids
from mimo_toolkit.runtime.parallel.p2p import P2P

TIMEOUT = datetime.timedelta(seconds=437)
LAYOUTS = {
    "heterogeneous": ("heterogeneous", {"vision": dict(dp=2), "llm": dict(tp=2, dp=1, rank_offset=2)}),
    "colocated": ("colocated", {"vision": dict(dp=4), "llm": dict(tp=2, pp=2)}),
    "colocated-dp": ("colocated", {"vision": dict(tp=2), "llm": dict(dp=4)}),
}
ARCHS = {"vision": tiny_vision, "llm": tiny_llm}
#: DDP result key -> grid dims its group spans.
DDP_GROUP_DIMS = {"tp_group": ["tp"], "pp_group": ["pp"], "dp_group": ["dp"], "dp_cp_group": ["cp", "dp"],
                  "expt_dp_group": ["cp", "dp"], "intra_dp_cp_group": ["cp", "dp"], "ep_group": []}


def expected_ranks(par: ModuleParallelismConfig, rank: int, dims: list[str]) -> list[int]:
    """Ranks sharing every coordinate with ``rank`` except ``dims`` (independent of HyperCommGrid)."""
    mine = par.coordinates(rank)
    return sorted(r for r in par.ranks if all(par.coordinates(r)[d] == mine[d] for d in GRID_DIMS if d not in dims))


def timeout_of(group: dist.ProcessGroup) -> datetime.timedelta:
    return group._get_backend(torch.device("cpu")).options._timeout


def check_layout(mode: str, modules: dict) -> None:
    layout = MimoParallelismConfig(
        module_parallelisms={n: ModuleParallelismConfig(**kw) for n, kw in modules.items()},
        deployment_mode=mode, special_token_ids={"vision": -200},
    )
    layout.finalize(dist.get_world_size())
    _, pgcs = grids.build_all(layout, "gloo", TIMEOUT)
    rank = dist.get_rank()
    alone = {id(group) for pgc in pgcs.values() if pgc is not None for group in vars(pgc).values()
             if isinstance(group, dist.ProcessGroup) and group.size() == 1}
    assert len(alone) == 1, f"{mode}: rank {rank} holds {len(alone)} single-rank groups, not one shared"
    for name, par in layout.module_parallelisms.items():
        pgc = pgcs[name]
        assert (pgc is None) == (rank not in par.ranks), (name, rank)
        if pgc is None:
            continue
        config = transformer_config(ARCHS[name](), par, torch.bfloat16)  # the module's config, as the runtime builds it
        before = dist.distributed_c10d._world.group_count
        groups = ProcessGroupCollection.setup_process_groups_for_ddp(pgc, config, DistributedDataParallelConfig())
        assert dist.distributed_c10d._world.group_count == before, f"{name}: DDP created a group of its own"
        for key, dims in DDP_GROUP_DIMS.items():
            got = dist.get_process_group_ranks(groups[key])
            assert got == expected_ranks(par, rank, dims), (mode, name, key, got, expected_ranks(par, rank, dims))
            assert timeout_of(groups[key]) == TIMEOUT, (mode, name, key, timeout_of(groups[key]))


def main() -> None:
    dist.init_process_group("gloo", timeout=TIMEOUT)
    for mode, modules in LAYOUTS.values():
        check_layout(mode, modules)
    p2p = P2P("gloo", TIMEOUT)
    assert all(timeout_of(g) == TIMEOUT for g in p2p.groups.values())
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, dist.distributed_c10d._world.group_count)
    assert len(set(counts)) == 1, f"ranks created different numbers of groups: {counts}"
    print(f"rank {dist.get_rank()}: {len(LAYOUTS)} layouts checked, {counts[0]} groups", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
