"""The layout search: enumerate, prune cheaply, estimate, keep the best per mode, validate.

Per module the search first keeps the (tp, cp, pp) shapes that fit the model (tp from the
divisors of the GPUs per node, so tp groups stay in a node; pp from powers of two and the
divisors of the layer count; cp for the LLM only). It then forms whole layouts per mode and
micro-batch size, pruning in order of cost: divisibility (integers only), memory of each
module alone, and a lower bound on the step time against the k-th best found so far (options
are visited in order of their lower bound, so a failed bound ends a loop). Heterogeneous
layouts pick the LLM's dp among the divisors of ``global_batch / mbs`` and give the remaining
ranks to the encoders, so the search never walks the millions of dp splits that cannot hold a
batch: they are counted, not visited.

A pruned count is a number of whole layouts (a layout = mode, micro-batch size and every
module's tp/cp/pp/dp); with several encoders a partial layout pruned before the later
encoders' dp is chosen counts once per combination of their shapes. Every layout returned has
passed the project's validation through the ``accept`` callback.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .candidate import Candidate, Placement, make_candidate
from .cost import MODES, ModuleEstimate, bridge_s, estimate_module, step_s
from .rules import batch_reason, encoder_reason, shape_reason, straddles
from .workload import Problem

#: Candidates kept per mode beyond top-k, in case validation rejects some.
SPARE = 8
#: Micro-batch sizes tried: the divisors of the global batch up to this (and the recipe's own).
MAX_MICRO_BATCH = 32


@dataclass(frozen=True)
class Shape:
    """A module's model-parallel shape."""

    tp: int
    cp: int
    pp: int

    @property
    def mp(self) -> int:
        return self.tp * self.cp * self.pp


@dataclass
class PruneLog:
    """What the search ruled out, by reason key (see ``rules.REASONS``)."""

    shapes: Counter = field(default_factory=Counter)
    """Module shapes ruled out before any layout is formed (counted once per module)."""
    layouts: Counter = field(default_factory=Counter)
    """Layouts ruled out, by (mode, first reason found)."""
    evaluated: int = 0
    """Layouts whose step time was estimated."""
    rejections: list[str] = field(default_factory=list)
    """Messages of ``resolve.validate`` for layouts it rejected (should stay empty)."""

    @property
    def considered(self) -> int:
        return self.evaluated + sum(self.layouts.values())

    def by_reason(self, mode: str | None = None) -> Counter:
        """Pruned layouts by reason, over all modes or for one."""
        out: Counter = Counter()
        for (m, reason), n in self.layouts.items():
            if mode is None or m == mode:
                out[reason] += n
        return out


@dataclass
class SearchResult:
    """The top layouts, the best of each mode, and what was pruned."""

    problem: Problem
    top: list[Candidate]
    best: dict[str, Candidate]
    log: PruneLog
    micro_batch_sizes: tuple[int, ...]
    shared_shapes: tuple[str, ...] = ()
    """The tp/pp shapes every module admits (the only ones a homogeneous layout can use)."""
    seconds: float = 0.0

    @property
    def baseline(self) -> Candidate | None:
        return self.best.get("homogeneous")

    @property
    def gain(self) -> float | None:
        """Predicted speed-up of the best layout over the best homogeneous one; infinite when
        no homogeneous layout is valid and fits, None when nothing does."""
        if not self.top:
            return None
        base = self.baseline
        return base.step_s / self.top[0].step_s if base else math.inf


class _Top:
    """The fastest ``size`` distinct layouts of one mode (one entry per layout: the best
    micro-batch size and recomputation choice for it), kept sorted by step time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: list[tuple[float, tuple, Candidate]] = []

    def bound(self) -> float:
        return self.entries[-1][0] if len(self.entries) >= self.size else math.inf

    def push(self, step: float, placements: Sequence[Placement], build: Callable[[], Candidate]) -> None:
        if step >= self.bound():
            return
        key = tuple((p.name, p.tp, p.cp, p.pp, p.dp, p.rank_offset) for p in placements)
        same = next((i for i, e in enumerate(self.entries) if e[1] == key), None)
        if same is not None:
            if self.entries[same][0] <= step:
                return
            del self.entries[same]
        bisect.insort(self.entries, (step, key, build()), key=lambda e: e[0])
        del self.entries[self.size:]

    def ordered(self) -> list[Candidate]:
        return [c for _, _, c in self.entries]


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def micro_batch_sizes(problem: Problem) -> tuple[int, ...]:
    limit = max(MAX_MICRO_BATCH, problem.micro_batch)
    return tuple(d for d in divisors(problem.global_batch) if d <= limit)


class _Search:
    def __init__(self, problem: Problem, top_k: int) -> None:
        self.p = problem
        self.k = top_k
        self.log = PruneLog()
        self.tops = {mode: _Top(top_k + SPARE) for mode in MODES}
        self.memo: dict[tuple, ModuleEstimate] = {}
        self.cap = problem.machine.usable_bytes
        self.mbs_list = micro_batch_sizes(problem)
        self.llm = len(problem.modules) - 1
        self.mode = MODES[0]
        self.shared: tuple[str, ...] = ()
        self.shapes = [self._module_shapes(i) for i in range(len(problem.modules))]
        self.max_rate = [problem.machine.max_rate(w.kind, w.hidden, problem.precision) for w in problem.modules]
        choice = problem.assumptions.recompute
        self.recompute = [
            [False] if choice == "never" or not w.needs_backward else [True] if choice == "always" else [False, True]
            for w in problem.modules
        ]

    # ---- helpers ---------------------------------------------------------------------
    def _module_shapes(self, i: int) -> list[Shape]:
        w, gpn, world = self.p.modules[i], self.p.gpus_per_node, self.p.world
        tps = [t for t in range(1, gpn + 1) if gpn % t == 0]
        pps = sorted({1 << j for j in range(7) if (1 << j) <= w.layers} | {d for d in divisors(w.layers) if d <= 64})
        cps = [1 << j for j in range(5)] if w.is_language else [1]
        out = []
        for tp, cp, pp in itertools.product(tps, cps, pps):
            if tp * cp * pp > world:
                continue
            reason = shape_reason(w, tp, cp, pp, self.p.seq_length)
            if reason:
                self.log.shapes[reason] += 1
            else:
                out.append(Shape(tp, cp, pp))
        return out

    def prune(self, reason: str, count: int = 1) -> None:
        if count > 0:
            self.log.layouts[self.mode, reason] += count

    def estimate(self, i: int, s: Shape, dp: int, b: int, m: int, rc: bool, llm_pp: int = 1,
                 heterogeneous: bool = False) -> ModuleEstimate:
        """Module ``i``'s estimate; ``llm_pp`` and ``heterogeneous`` only change an encoder's
        micro-batches in flight (its activations)."""
        key = (i, s, dp, b, m, rc, llm_pp, heterogeneous)
        est = self.memo.get(key)
        if est is None:
            est = estimate_module(self.p, self.p.modules[i], s.tp, s.cp, s.pp, dp, b, m, rc, llm_pp, heterogeneous)
            self.memo[key] = est
        return est

    def fitting(self, i: int, s: Shape, dp: int, b: int, m: int, llm_pp: int = 1,
                heterogeneous: bool = False) -> tuple[ModuleEstimate, bool] | None:
        """The fastest recomputation choice with which module ``i`` alone fits in memory."""
        for rc in self.recompute[i]:
            est = self.estimate(i, s, dp, b, m, rc, llm_pp, heterogeneous)
            if est.memory.total <= self.cap:
                return est, rc
        return None

    def _floor(self, i: int, s: Shape, b: int, m: int) -> float:
        """A lower bound of module ``i``'s busy time: its compute at the highest rate it can reach."""
        w = self.p.modules[i]
        return m * b * w.stage_work_flops(s.pp, False) / (s.tp * s.cp) / self.max_rate[i]

    def _spanning_dp(self, s: Shape, count: int) -> int | None:
        """The dp of a module spread over every rank, or None (``count`` layouts pruned) when
        its tp x cp x pp does not divide the world."""
        if self.p.world % s.mp:
            self.prune("tiling", count)
            return None
        return self.p.world // s.mp

    def _passes(self, reason: str | None, count: int) -> bool:
        """False (and ``count`` layouts pruned for ``reason``) when a rule failed."""
        if reason:
            self.prune(reason, count)
        return reason is None

    def _encoder_universe(self, start: int = 0) -> int:
        return math.prod(len(self.shapes[j]) for j in range(start, self.llm))

    # ---- shared ranks: homogeneous and colocated ----------------------------------------
    def _joint(self, mode: str, mbs: int, specs: list[tuple[Shape, int, int]], m: int) -> None:
        """All modules on every rank: choose recomputation per module so that their sum fits."""
        placements = [Placement(w.name, s.tp, s.cp, s.pp, dp) for w, (s, dp, _) in zip(self.p.modules, specs)]
        llm_pp = specs[-1][0].pp
        options = [
            [(rc, self.estimate(i, s, dp, b, m, rc, llm_pp)) for rc in self.recompute[i]]
            for i, (s, dp, b) in enumerate(specs)
        ]
        bridge = bridge_s(self.p, mode, [p.grid for p in placements], m)
        best: tuple[float, tuple] | None = None
        for combo in itertools.product(*options):
            if sum(e.memory.total for _, e in combo) <= self.cap:
                step = step_s(self.p, mode, [e for _, e in combo], bridge, m)
                if best is None or step < best[0]:
                    best = (step, combo)
        if best is None:
            self.prune("oom")
            return
        self.log.evaluated += 1
        step, combo = best
        final = [dataclasses.replace(p, recompute=rc) for p, (rc, _) in zip(placements, combo)]
        self.tops[mode].push(step, final, lambda: make_candidate(self.p, mode, mbs, final, [e for _, e in combo], m))

    def homogeneous(self) -> None:
        others = [set(self.shapes[i]) for i in range(self.llm)]
        common = [s for s in self.shapes[self.llm] if s.cp == 1 and all(s in o for o in others)]
        self.shared = tuple(f"tp{s.tp} pp{s.pp}" for s in common)
        gbs = self.p.global_batch
        for mbs, s in itertools.product(self.mbs_list, common):
            dp = self._spanning_dp(s, 1)
            if dp is None or not self._passes(batch_reason(gbs, mbs, dp), 1):
                continue
            self._joint("homogeneous", mbs, [(s, dp, mbs)] * len(self.p.modules), gbs // (mbs * dp))

    def colocated(self) -> None:
        gbs = self.p.global_batch
        universe = self._encoder_universe()
        llm_opts = []
        for mbs, ls in itertools.product(self.mbs_list, self.shapes[self.llm]):
            dp_l = self._spanning_dp(ls, universe)
            if dp_l is None or not self._passes(batch_reason(gbs, mbs, dp_l), universe):
                continue
            m = gbs // (mbs * dp_l)
            llm_opts.append((self._floor(self.llm, ls, mbs, m), mbs, ls, dp_l, m))
        llm_opts.sort(key=lambda o: o[0])
        top = self.tops["colocated"]
        for j, (floor, mbs, ls, dp_l, m) in enumerate(llm_opts):
            if floor >= top.bound():
                self.prune("bound", (len(llm_opts) - j) * universe)
                return
            lists = [self._colocated_options(e, mbs, dp_l, m, universe) for e in range(self.llm)]
            llm_low = min(self._low(self.llm, ls, dp_l, mbs, m))
            self._combine(mbs, m, ls, dp_l, lists, 0, [], llm_low)

    def _low(self, i: int, s: Shape, dp: int, b: int, m: int) -> list[float]:
        return [e.busy_s + e.sync_s for e in (self.estimate(i, s, dp, b, m, rc) for rc in self.recompute[i])]

    def _colocated_options(self, e: int, mbs: int, dp_l: int, m: int, universe: int) -> list:
        others = universe // max(1, len(self.shapes[e]))
        opts = []
        for es in self.shapes[e]:
            dp = self._spanning_dp(es, others)
            if dp is None or not self._passes(encoder_reason(mbs, dp_l, dp), others):
                continue
            b = mbs * dp_l // dp
            opts.append((min(self._low(e, es, dp, b, m)), es, dp, b))
        opts.sort(key=lambda o: o[0])
        return opts

    def _combine(self, mbs: int, m: int, ls: Shape, dp_l: int, lists: list, depth: int,
                 chosen: list[tuple[Shape, int, int]], partial: float) -> None:
        if depth == len(lists):
            if all(s == ls for s, _, _ in chosen):
                return  # the same layout as a homogeneous one: counted there
            self._joint("colocated", mbs, [*chosen, (ls, dp_l, mbs)], m)
            return
        rest = lists[depth + 1:]
        if any(not r for r in rest):
            return
        rest_low = sum(r[0][0] for r in rest)
        deeper = math.prod(len(r) for r in rest)
        top = self.tops["colocated"]
        for j, (low, es, dp, b) in enumerate(lists[depth]):
            if partial + low + rest_low >= top.bound():
                self.prune("bound", (len(lists[depth]) - j) * deeper)
                return
            self._combine(mbs, m, ls, dp_l, lists, depth + 1, [*chosen, (es, dp, b)], partial + low)

    # ---- disjoint ranks: heterogeneous -------------------------------------------------
    def heterogeneous(self) -> None:
        n_enc = self.llm
        if n_enc == 0:
            return
        world, gbs = self.p.world, self.p.global_batch
        universe = self._encoder_universe()
        top = self.tops["heterogeneous"]
        llm_opts = []
        for mbs in self.mbs_list:
            divs = divisors(gbs // mbs)
            for ls in self.shapes[self.llm]:
                max_dp = (world - n_enc) // ls.mp
                fits = [d for d in divs if d <= max_dp]
                self.prune("batch", (max_dp - len(fits)) * universe)
                for dp_l in fits:
                    if self._passes("tp_straddle" if straddles(world - ls.mp * dp_l, ls.tp) else None, universe):
                        m = gbs // (mbs * dp_l)
                        llm_opts.append((self._floor(self.llm, ls, mbs, m), mbs, ls, dp_l, m))
        llm_opts.sort(key=lambda o: o[0])
        for j, (floor, mbs, ls, dp_l, m) in enumerate(llm_opts):
            if floor >= top.bound():
                self.prune("bound", (len(llm_opts) - j) * universe)
                return
            fit = self.fitting(self.llm, ls, dp_l, mbs, m)
            if fit is None or fit[0].busy_s >= top.bound():
                self.prune("oom" if fit is None else "bound", universe)
                continue
            rest = world - ls.mp * dp_l
            llm = Placement(self.p.llm.name, ls.tp, ls.cp, ls.pp, dp_l, rest, fit[1])
            self._place(mbs, m, llm, fit[0], 0, 0, rest, [])

    def _place(self, mbs: int, m: int, llm: Placement, llm_est: ModuleEstimate, i: int, offset: int,
               remaining: int, chosen: list[tuple[Placement, ModuleEstimate]]) -> None:
        """Give encoder ``i`` (and recursively the later ones) the ranks left by the LLM."""
        last = i == self.llm - 1
        others = self._encoder_universe(i + 1)
        top = self.tops["heterogeneous"]
        for es in self.shapes[i]:
            if last:
                if remaining % es.mp:
                    self.prune("tiling", others)
                    continue
                dps = [remaining // es.mp]
            else:
                max_dp = (remaining - (self.llm - i - 1)) // es.mp
                dps = [d for d in divisors(mbs * llm.dp) if d <= max_dp]
                self.prune("encoder_split", (max_dp - len(dps)) * others)
            for dp in dps:
                reason = encoder_reason(mbs, llm.dp, dp) or ("tp_straddle" if straddles(offset, es.tp) else None)
                if not self._passes(reason, others):
                    continue
                fit = self.fitting(i, es, dp, mbs * llm.dp // dp, m, llm.pp, heterogeneous=True)
                if fit is None:
                    self.prune("oom", others)
                    continue
                if fit[0].busy_s >= top.bound():
                    self.prune("bound", others)
                    continue
                place = Placement(self.p.modules[i].name, es.tp, es.cp, es.pp, dp, offset, fit[1])
                placed = [*chosen, (place, fit[0])]
                if last:
                    self._finish_heterogeneous(mbs, m, llm, llm_est, placed)
                else:
                    self._place(mbs, m, llm, llm_est, i + 1, offset + place.size, remaining - place.size, placed)

    def _finish_heterogeneous(self, mbs: int, m: int, llm: Placement, llm_est: ModuleEstimate,
                              placed: list[tuple[Placement, ModuleEstimate]]) -> None:
        self.log.evaluated += 1
        placements = [p for p, _ in placed] + [llm]
        estimates = [e for _, e in placed] + [llm_est]
        bridge = bridge_s(self.p, "heterogeneous", [p.grid for p in placements], m)
        step = step_s(self.p, "heterogeneous", estimates, bridge, m)
        self.tops["heterogeneous"].push(
            step, placements, lambda: make_candidate(self.p, "heterogeneous", mbs, placements, estimates, m)
        )

    # ---- results -----------------------------------------------------------------------
    def result(self, accept: Callable[[Candidate], str | None] | None, started: float) -> SearchResult:
        best: dict[str, Candidate] = {}
        kept: list[Candidate] = []
        for mode, top in self.tops.items():
            valid = []
            self.mode = mode
            for cand in top.ordered():
                if len(valid) >= self.k:
                    break
                message = accept(cand) if accept else None
                if message:
                    self.prune("validate")
                    self.log.rejections.append(f"{cand.describe()}: {message}")
                    continue
                valid.append(cand)
            if valid:
                best[mode] = valid[0]
            kept += valid
        kept.sort(key=lambda c: c.step_s)
        return SearchResult(self.p, kept[: self.k], best, self.log, self.mbs_list, self.shared,
                            time.perf_counter() - started)


def search(problem: Problem, top_k: int = 3, accept: Callable[[Candidate], str | None] | None = None) -> SearchResult:
    """The ``top_k`` fastest valid layouts of ``problem`` over all deployment modes.

    ``accept`` is the authoritative check (the planner passes the project's validation); it
    returns None for a valid layout or the reason it is not.
    """
    started = time.perf_counter()
    s = _Search(problem, top_k)
    for mode in MODES:
        s.mode = mode
        getattr(s, mode)()
    return s.result(accept, started)
