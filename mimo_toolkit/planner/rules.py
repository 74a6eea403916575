"""Which layouts are valid: cheap arithmetic for pruning, then the project's own validation.

The search prunes millions of layouts with the divisibility rules below before it estimates
anything; they restate, as plain integer tests, the checks of ``mimo_toolkit.layout``
(``validation.check_model_fit``, ``validation.check_batch_fit``, ``layout._check_dp_ratios``) so that nothing has to be
built per layout. They are a pre-filter, not the authority: every layout the planner returns
has passed :func:`mimo_toolkit.resolve.validate` on a real JobConfig (:func:`validated_job`),
and the tests check the two agree on a whole small search space.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import JobConfig
from ..resolve import validate
from .candidate import Candidate, Placement
from .workload import ModuleWork, Problem

#: Why a layout was not estimated or not returned, by key (the order they are checked in).
REASONS = {
    "heads": "tp does not divide attention heads / query groups",
    "layers": "pp does not divide layers",
    "cp_seq": "seq_length not divisible by 2 x cp",
    "cp_encoder": "context parallelism is for the language module only",
    "encoder_pp": "encoders run as one pipeline stage",
    "cp": "context parallelism is not implemented by the runtime",
    "homogeneous": "homogeneous modules must share one tp/cp/pp/dp",
    "tiling": "module sizes do not tile the ranks",
    "batch": "global batch not divisible by micro-batch x llm dp",
    "dp_ratio": "encoder and llm dp do not divide one another",
    "encoder_split": "encoder dp cannot split a micro-batch evenly",
    "tp_straddle": "a tp group would straddle two nodes",
    "oom": "out of memory (even with recomputation)",
    "bound": "cannot reach the top-k (its lower bound is slower)",
    "validate": "rejected by mimo_toolkit.resolve.validate",
}


def shape_reason(w: ModuleWork, tp: int, cp: int, pp: int, seq_length: int) -> str | None:
    """Model fit of one module's tp/cp/pp and what the runtime supports
    (``validation.check_model_fit``, ``validation.check_runtime_support``)."""
    if cp > 1 and not w.is_language:
        return "cp_encoder"
    if w.heads % tp or w.query_groups % tp:
        return "heads"
    if w.layers % pp:
        return "layers"
    if cp > 1 and seq_length % (2 * cp):
        return "cp_seq"
    if pp > 1 and not w.is_language:
        return "encoder_pp"
    if cp > 1:
        return "cp"
    return None


def batch_reason(global_batch: int, mbs: int, llm_dp: int) -> str | None:
    """The global batch is accumulated from micro-batches of ``mbs x llm.dp`` (``check_batch_fit``)."""
    return "batch" if global_batch % (mbs * llm_dp) else None


def encoder_reason(mbs: int, llm_dp: int, dp: int) -> str | None:
    """An encoder's dp and the LLM's divide one another, and its replicas split a micro-batch."""
    if llm_dp % dp and dp % llm_dp:
        return "dp_ratio"
    if (mbs * llm_dp) % dp:
        return "encoder_split"
    return None


def straddles(rank_offset: int, tp: int) -> bool:
    """A planner rule, not a project one: tp groups stay inside a node (tp divides the node's
    GPUs, so a module whose first rank is a multiple of its tp never splits a tp group)."""
    return rank_offset % tp != 0


def layout_reason(problem: Problem, mode: str, mbs: int, placements: Sequence[Placement]) -> str | None:
    """The first of these rules a whole layout breaks (placements: encoders first, the LLM
    last), or None. The search applies the same rules piece by piece; this whole-layout form
    lets the tests hold them against ``resolve.validate`` on every layout of a small space."""
    for w, p in zip(problem.modules, placements):
        reason = shape_reason(w, p.tp, p.cp, p.pp, problem.seq_length)
        if reason:
            return reason
    world = problem.world
    if mode == "heterogeneous":
        offset = 0
        for p in placements:
            if p.rank_offset != offset:
                return "tiling"
            offset += p.size
        if offset != world:
            return "tiling"
    elif any(p.size != world for p in placements):
        return "tiling"
    elif mode == "homogeneous" and len({(p.tp, p.cp, p.pp, p.dp) for p in placements}) > 1:
        return "homogeneous"
    llm = placements[-1]
    reason = batch_reason(problem.global_batch, mbs, llm.dp)
    for p in placements[:-1]:
        reason = reason or encoder_reason(mbs, llm.dp, p.dp)
    if reason:
        return reason
    if any(straddles(p.rank_offset, p.tp) for p in placements):
        return "tp_straddle"
    return None


def apply_candidate(job: JobConfig, candidate: Candidate, nodes: int, gpus_per_node: int, gpu: bool) -> None:
    """Set ``job``'s layout, micro-batch and cluster shape to the candidate's (in place)."""
    job.layout = candidate.to_layout(job.layout.language_module, job.layout.special_token_ids)
    job.train.micro_batch_size = candidate.micro_batch_size
    job.cluster.nodes = nodes
    job.cluster.procs_per_node = gpus_per_node
    job.cluster.gpus_per_node = gpus_per_node if gpu else 0


def check_candidate(job: JobConfig, candidate: Candidate, nodes: int, gpus_per_node: int, gpu: bool) -> JobConfig:
    """Apply the candidate to ``job`` (in place; a scratch copy) and run ``resolve.validate``
    on it; returns the finalized job or raises :class:`~mimo_toolkit.errors.UserError` with
    the project's message."""
    apply_candidate(job, candidate, nodes, gpus_per_node, gpu)
    return validate(job, nodes * gpus_per_node).config
