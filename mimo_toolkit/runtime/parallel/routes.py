"""Who sends what to whom: pipeline neighbours, bridge chunks and process-group members.

Pure arithmetic on the layout (no torch): the engine and the bridge route their messages
with it, and the rendezvous simulator (``mimo_toolkit.runtime.train.rendezvous``) replays
the same routes for every rank without running anything.

Bridge chunks: encoder replica ``j`` of ``dp_e`` holds samples ``[j*M/dp_e, (j+1)*M/dp_e)``
of a global micro-batch of ``M`` samples, LLM replica ``i`` of ``dp_l`` needs
``[i*M/dp_l, ...)``. The two sizes divide one another, so each overlapping pair of replicas
shares one contiguous run of samples: one chunk, taken in sample order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import product

from ...layout import GRID_DIMS, MimoParallelismConfig, ModuleParallelismConfig


def overlap(a_rep: int, a_reps: int, b_rep: int, b_reps: int, samples: int) -> range:
    """Samples (micro-batch positions) shared by replica ``a_rep`` of ``a_reps`` and ``b_rep`` of ``b_reps``."""
    a, b = samples // a_reps, samples // b_reps
    lo, hi = max(a_rep * a, b_rep * b), min((a_rep + 1) * a, (b_rep + 1) * b)
    return range(lo, max(lo, hi))


def replica_samples(replica: int, replicas: int, samples: int) -> range:
    """Micro-batch positions of one replica's slice."""
    per = samples // replicas
    return range(replica * per, (replica + 1) * per)


@dataclass(frozen=True)
class BridgeRoute:
    """One chunk of one encoder's embeddings (or their gradient) between two replicas."""

    module: str
    enc_replica: int
    llm_replica: int
    samples: range
    """Micro-batch positions of the chunk."""

    def rows(self, tokens_per_sample: list[int], first_sample: int) -> range:
        """Rows of the chunk in a replica's ``[tokens, hidden]`` tensor whose samples start at ``first_sample``."""
        start = sum(tokens_per_sample[: self.samples.start - first_sample])
        return range(start, start + sum(tokens_per_sample[self.samples.start - first_sample : self.samples.stop - first_sample]))


def bridge_routes(layout: MimoParallelismConfig, module: str, samples: int) -> list[BridgeRoute]:
    """Every chunk between ``module``'s replicas and the LLM's, in (encoder, LLM) replica order."""
    enc_dp, lm_dp = layout.module_parallelisms[module].dp, layout.language.dp
    routes = []
    for j in range(enc_dp):
        first, last = j * lm_dp // enc_dp, ((j + 1) * lm_dp - 1) // enc_dp  # the LLM replicas it meets
        for i in range(first, last + 1):
            routes.append(BridgeRoute(module, j, i, overlap(j, enc_dp, i, lm_dp, samples)))
    return routes


def route_samples(layout: MimoParallelismConfig) -> int:
    """The smallest micro-batch every replica of every module can split (the routes' shape
    does not depend on the micro-batch size, only on the dp sizes)."""
    return max(m.dp for m in layout.module_parallelisms.values())


def stage_rank(layout: MimoParallelismConfig, rank: int, stage: int) -> int:
    """The rank holding LLM pipeline ``stage`` in this rank's (tp, cp, dp) position."""
    lm = layout.language
    c = lm.coordinates(rank)
    return lm.rank_at(tp=c["tp"], cp=c["cp"], dp=c["dp"], pp=stage)


def leader(par: ModuleParallelismConfig, replica: int) -> int:
    """The rank that talks for a replica of a module over the P2P bridge (tp 0, cp 0, first stage)."""
    return par.rank_at(dp=replica)


def group_ranks(par: ModuleParallelismConfig, rank: int, dims: tuple[str, ...]) -> tuple[int, ...]:
    """Members of this rank's process group over ``dims`` (the other coordinates fixed)."""
    coords = par.coordinates(rank)
    fixed = tuple(coords[d] if d not in dims else -1 for d in GRID_DIMS)
    return _group(par.rank_offset, tuple(par.shape), dims, fixed)


@cache
def _group(offset: int, shape: tuple[int, ...], dims: tuple[str, ...], fixed: tuple[int, ...]) -> tuple[int, ...]:
    sizes = dict(zip(GRID_DIMS, shape))
    members = []
    for values in product(*(range(sizes[d]) for d in dims)):
        coords = {**dict(zip(GRID_DIMS, fixed)), **dict(zip(dims, values))}
        local, stride = 0, 1
        for d in GRID_DIMS:
            local += coords[d] * stride
            stride *= sizes[d]
        members.append(offset + local)
    return tuple(sorted(members))
