"""Per-module HyperCommGrids and ProcessGroupCollections.

Every module gets a megatron-core ``HyperCommGrid`` with dims ``tp, cp, dp, pp``
(innermost first, the order ``mimo_toolkit.layout`` numbers ranks in) starting at its
``rank_offset``. Process-group creation is a collective over the whole world, so EVERY rank
creates EVERY module's groups, in one fixed order (modules in declaration order, then the
dims below, then the embedding groups), including modules it does not take part in.
Creating them per rank in different orders caused silent cross-talk upstream.
"""

from __future__ import annotations

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


def _new_groups(rank_lists: list[list[int]], backend: str) -> dist.ProcessGroup | None:
    """Create one group per rank list (collective); return the one holding this rank."""
    mine = None
    for ranks in rank_lists:
        group = dist.new_group(ranks=ranks, backend=backend)
        if dist.get_rank() in ranks:
            mine = group
    return mine


def build_pg_collection(grid: HyperCommGrid, backend: str) -> ProcessGroupCollection | None:
    """Create all groups of one module (on every rank); None where this rank is outside it."""
    pgs = {field: grid.create_pg(dims) for field, dims in GROUP_DIMS.items()}
    pp_groups = grid.get_rank_enum("pp")
    # Embedding groups: first and last pipeline stage of each pipeline (tied embeddings),
    # and the first stage alone (position embeddings), as megatron-core's parallel_state does.
    embd = _new_groups([sorted({g[0], g[-1]}) for g in pp_groups], backend)
    pos_embd = _new_groups([[g[0]] for g in pp_groups], backend)
    if dist.get_rank() not in range(grid.rank_offset, grid.rank_offset + int(grid.size)):
        return None
    pgc = ProcessGroupCollection(**pgs)
    pgc.embd = embd
    pgc.pos_embd = pos_embd
    # Dense models: the expert data-parallel group is the data-parallel group (with CP);
    # megatron-core's DDP reads it and would otherwise create a group of its own (a collective).
    pgc.expt_dp = pgs["dp_cp"]
    pgc.intra_dp_cp = pgs["dp_cp"]
    return pgc


def build_all(layout: MimoParallelismConfig, backend: str) -> tuple[dict[str, HyperCommGrid], dict[str, ProcessGroupCollection | None]]:
    """Grids and this rank's ProcessGroupCollections for every module, in declaration order."""
    grids, pgcs = {}, {}
    for name, par in layout.module_parallelisms.items():
        grids[name] = build_grid(par, backend)
        pgcs[name] = build_pg_collection(grids[name], backend)
    return grids, pgcs
