"""Per-module HyperCommGrids and ProcessGroupCollections.

Every module gets a megatron-core ``HyperCommGrid`` with dims ``tp, cp, dp, pp``
(innermost first, the order ``mimo_toolkit.layout`` numbers ranks in) starting at its
``rank_offset``. Process-group creation is a collective over the whole world, so EVERY rank
creates EVERY module's groups, in one fixed order (modules in declaration order, then the
dims below, then the embedding and expert groups), including modules it does not take part
in. Creating them per rank in different orders caused silent cross-talk upstream.

The collection holds every group megatron-core's ``DistributedDataParallel`` requires
(``ProcessGroupCollection.setup_process_groups_for_ddp``: dp, dp_cp, expt_dp, and tp, pp
and ep), so wrapping a module creates no group of its own: a collective that only the
ranks holding trainable parameters would reach.

Every group gets the job's collective timeout: a subgroup created without one gets torch's
per-backend default (30 min gloo, 10 min NCCL), not the world group's.

A group of one rank is never created per role: each rank gets ONE single-rank group (created
once, for every rank, before the modules) and every role whose group would be that rank alone
(cp, dp, pp at size 1, the position-embedding and expert groups, ...) shares it. Its
collectives have no peer to match, so sharing cannot cross-talk, and each group saved is one
less communicator, and on gloo one less transport thread waking every 10 ms: a TP2 rank of two
modules held 23 groups and 70 threads, now 10 and 31 (no speed-up of the import resolvable on a
2-core VM, docs/bench_import.md). Groups of two or more ranks stay one per role, even where two
roles hold the same ranks: their collectives must match peer by peer.
"""

from __future__ import annotations

import datetime
import math

import torch.distributed as dist
from megatron.core.hyper_comm_grid import HyperCommGrid
from megatron.core.process_groups_config import ProcessGroupCollection

from ...layout import GRID_DIMS, MimoParallelismConfig, ModuleParallelismConfig

#: ProcessGroupCollection field -> grid dims, created in this order for every module.
GROUP_DIMS: dict[str, list[str]] = {
    "tp": ["tp"],
    "cp": ["cp"],
    "dp": ["dp"],
    "pp": ["pp"],
    "tp_cp": ["tp", "cp"],
    "dp_cp": ["cp", "dp"],
    "mp": ["tp", "pp"],
    "tp_dp_cp": ["tp", "cp", "dp"],
}


def build_grid(par: ModuleParallelismConfig, backend: str) -> HyperCommGrid:
    return HyperCommGrid(par.shape, list(GRID_DIMS), rank_offset=par.rank_offset, backend=backend)


def _new_groups(rank_lists: list[list[int]], backend: str, timeout: datetime.timedelta | None,
                alone: dist.ProcessGroup | None = None) -> dist.ProcessGroup | None:
    """Create one group per rank list (collective); return the one holding this rank. Where
    every list is a single rank (decided by the layout alone, so the same on every rank), create
    nothing and return ``alone`` (this rank's single-rank group) if this rank is listed."""
    if alone is not None and all(len(ranks) == 1 for ranks in rank_lists):
        return alone if any(dist.get_rank() in ranks for ranks in rank_lists) else None
    mine = None
    for ranks in rank_lists:
        group = dist.new_group(ranks=ranks, backend=backend, timeout=timeout)
        if dist.get_rank() in ranks:
            mine = group
    return mine


def _grid_group(grid: HyperCommGrid, dims: list[str], timeout: datetime.timedelta | None,
                alone: dist.ProcessGroup) -> dist.ProcessGroup | None:
    """The module's group spanning ``dims``: ``alone`` where those dims have size 1 together."""
    if math.prod(grid.shape[grid.dim_names.index(d)] for d in dims) == 1:
        return alone
    return grid.create_pg(dims, timeout=timeout)


def build_pg_collection(grid: HyperCommGrid, backend: str, timeout: datetime.timedelta | None,
                        alone: dist.ProcessGroup) -> ProcessGroupCollection | None:
    """Create all groups of one module (on every rank); None where this rank is outside it.
    ``alone``: this rank's single-rank group, shared by the roles where the rank is alone."""
    pgs = {field: _grid_group(grid, dims, timeout, alone) for field, dims in GROUP_DIMS.items()}
    pp_groups = grid.get_rank_enum("pp")
    # Embedding groups: first and last pipeline stage of each pipeline (tied embeddings),
    # and the first stage alone (position embeddings), as megatron-core's parallel_state does.
    embd = _new_groups([sorted({g[0], g[-1]}) for g in pp_groups], backend, timeout, alone)
    pos_embd = _new_groups([[g[0]] for g in pp_groups], backend, timeout, alone)
    # Expert parallelism: the recipes' models are dense (the layout refuses ep > 1), so each
    # rank is its own expert-parallel group, as in parallel_state with ep=1. DDP requires it.
    module_ranks = range(grid.rank_offset, grid.rank_offset + int(grid.size))
    ep = _new_groups([[r] for r in module_ranks], backend, timeout, alone)
    if dist.get_rank() not in module_ranks:
        return None
    pgc = ProcessGroupCollection(**pgs)
    pgc.embd = embd
    pgc.pos_embd = pos_embd
    pgc.ep = ep
    # Dense models: the expert data-parallel group is the data-parallel group (with CP);
    # megatron-core's DDP reads it and would otherwise create a group of its own (a collective).
    pgc.expt_dp = pgs["dp_cp"]
    pgc.intra_dp_cp = pgs["dp_cp"]
    return pgc


def build_all(layout: MimoParallelismConfig, backend: str, timeout: datetime.timedelta | None = None,
              ) -> tuple[dict[str, HyperCommGrid], dict[str, ProcessGroupCollection | None]]:
    """Grids and this rank's ProcessGroupCollections for every module, in declaration order."""
    alone = _new_groups([[rank] for rank in range(dist.get_world_size())], backend, timeout)
    grids, pgcs = {}, {}
    for name, par in layout.module_parallelisms.items():
        grids[name] = build_grid(par, backend)
        pgcs[name] = build_pg_collection(grids[name], backend, timeout, alone)
    return grids, pgcs
