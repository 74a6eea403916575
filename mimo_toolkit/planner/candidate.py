"""A candidate layout and its prediction; the conversion to the project's layout objects.

A candidate is what the search returns and what ``--apply`` writes: a deployment mode, a
micro-batch size, and per module (encoders first) its tp/cp/pp/dp, first rank and whether the
plan needs full activation recomputation for it to fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..layout import MimoParallelismConfig, ModuleParallelismConfig
from .cost import GridSize, ModuleEstimate, bridge_s, estimate_module, step_s
from .hardware import GIB
from .workload import Problem


@dataclass(frozen=True)
class Placement:
    """One module's grid in a candidate."""

    name: str
    tp: int
    cp: int
    pp: int
    dp: int
    rank_offset: int = 0
    recompute: bool = False

    @property
    def size(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def grid(self) -> GridSize:
        return GridSize(self.tp, self.cp, self.dp)

    def shape_text(self) -> str:
        cp = f" cp{self.cp}" if self.cp > 1 else ""
        return f"tp{self.tp}{cp} pp{self.pp} dp{self.dp}"

    def to_config(self, scalable: bool) -> ModuleParallelismConfig:
        return ModuleParallelismConfig(
            tp=self.tp,
            pp=self.pp,
            cp=self.cp,
            dp=self.dp,
            rank_offset=self.rank_offset,
            scalable=scalable,
        )


@dataclass(frozen=True)
class Candidate:
    """A layout with its predicted step time, throughput and memory."""

    mode: str
    micro_batch_size: int
    placements: tuple[Placement, ...]
    step_s: float
    tokens_per_s: float
    mfu: float | None
    memory_bytes: tuple[float, ...]
    """Peak bytes per GPU of each module's ranks (colocated/homogeneous: every rank, all modules)."""
    breakdown: dict[str, float] = field(default_factory=dict, compare=False)
    """Per-module busy, sync and bubble seconds; bridge seconds."""

    @property
    def memory_gib(self) -> float:
        return max(self.memory_bytes) / GIB

    @property
    def recomputed(self) -> list[str]:
        return [p.name for p in self.placements if p.recompute]

    def describe(self) -> str:
        """One line: every module's grid (ranks too where modules own disjoint ranks)."""
        if self.mode == "homogeneous":
            return f"all: {self.placements[-1].shape_text()}"
        parts = []
        for p in self.placements:
            ranks = f" [{p.rank_offset},{p.rank_offset + p.size})" if self.mode == "heterogeneous" else ""
            parts.append(f"{p.name}{ranks} {p.shape_text()}")
        return " | ".join(parts)

    def to_layout(self, language: str, special_token_ids: dict[str, int]) -> MimoParallelismConfig:
        """The project's layout object (the language module scalable in heterogeneous mode,
        so ``--nodes`` can still grow it, as the built-in presets do)."""
        hetero = self.mode == "heterogeneous"
        return MimoParallelismConfig(
            module_parallelisms={p.name: p.to_config(hetero and p.name == language) for p in self.placements},
            language_module=language,
            deployment_mode=self.mode,  # type: ignore[arg-type]
            special_token_ids=dict(special_token_ids),
        )


def make_candidate(problem: Problem, mode: str, mbs: int, placements: Sequence[Placement],
                   estimates: Sequence[ModuleEstimate], micro_batches: int) -> Candidate:
    """Combine per-module estimates into a candidate (step time by mode, memory per GPU)."""
    bridge = bridge_s(problem, mode, [p.grid for p in placements], micro_batches)
    step = step_s(problem, mode, estimates, bridge, micro_batches)
    if mode == "heterogeneous":
        memory = tuple(e.memory.total for e in estimates)
    else:
        memory = (sum(e.memory.total for e in estimates),)
    peak = problem.machine.peak(problem.precision)
    mfu = problem.useful_flops_per_step / (step * problem.world * peak) if peak else None
    breakdown = {"bridge_s": bridge}
    for p, e in zip(placements, estimates):
        breakdown.update({f"{p.name}.busy_s": e.busy_s, f"{p.name}.compute_s": e.compute_s,
                          f"{p.name}.sync_s": e.sync_s, f"{p.name}.bubble": e.bubble})
    return Candidate(
        mode=mode,
        micro_batch_size=mbs,
        placements=tuple(placements),
        step_s=step,
        tokens_per_s=problem.global_batch * problem.seq_length / step,
        mfu=mfu,
        memory_bytes=memory,
        breakdown=breakdown,
    )


def evaluate_layout(problem: Problem, layout: MimoParallelismConfig, mbs: int,
                    recompute_of: dict[str, str] | None = None) -> Candidate:
    """The prediction for an existing, finalized layout (a preset's own, or one being timed).
    ``recompute_of`` is the job's ``train.recompute``: a module set to ``full`` is charged its
    extra forward; the others recompute only if they would not fit otherwise."""
    lm = layout.language
    micro_batches = problem.global_batch // (mbs * lm.dp)
    placements, estimates = [], []
    for w in problem.modules:
        m = layout.module_parallelisms[w.name]
        args = (problem, w, m.tp, m.cp, m.pp, m.dp, mbs * lm.dp // m.dp,
                micro_batches)
        recompute = (recompute_of or {}).get(w.name) == "full" and w.needs_backward
        ahead = (lm.pp, layout.deployment_mode == "heterogeneous")
        est = estimate_module(*args, recompute, *ahead)
        if not recompute and est.memory.total > problem.machine.usable_bytes and w.needs_backward:
            est, recompute = estimate_module(*args, True, *ahead), True
        placements.append(Placement(w.name, m.tp, m.cp, m.pp, m.dp,
                                    m.rank_offset, recompute))
        estimates.append(est)
    return make_candidate(problem, layout.deployment_mode, mbs, placements, estimates, micro_batches)
