"""The multi-module schedule: which forward/backward step each rank runs, in what order.

megatron-core 0.16.1's 1F1B schedule drives one module; here the encoders and the LLM's
pipeline stages form one pipeline (encoders at position 0, LLM stage ``s`` at ``1 + s``)
and every rank gets the list of operations of its roles:

* ``F(module, stage, mb)`` forward of micro-batch ``mb``; ``B(...)`` its backward (only for
  modules through which gradients flow: the LLM whenever anything trains, an encoder when
  its encoder or projector trains).
* 1F1B: a role at position ``k`` keeps at most ``depth - k`` micro-batches in flight, and a
  ready backward goes before a forward. Forward-only (frozen) encoders run ahead freely.
* Encoders on ranks of their own (heterogeneous) keep ``ENCODER_RUN_AHEAD`` more: with only
  ``depth`` in flight, an encoder makes micro-batch ``i+2`` right after the backward of
  ``i``, and the LLM, which needs it one LLM micro-batch later, waits whenever the encoder
  costs nearly as much as the LLM (issue #13: the "bridge wait"). One more micro-batch in
  flight (its activations kept until its backward) gives the encoder a whole LLM
  micro-batch of slack. Losses are unchanged: backwards keep their order.
* Colocated (or homogeneous) encoders with a pipelined LLM: an encoder operation is a gang
  over every rank, so taken in micro-batch order it would stop all LLM stages each time and
  run one micro-batch through the whole pipeline before the next (no pipelining at all).
  There the encoders' forwards go first (up to their in-flight limit), so the LLM stages
  then run a real 1F1B pipeline on the embeddings already made.

The lists come from a deterministic list-scheduling simulation that every rank runs
identically. An operation is a gang over all ranks holding its role (so the collectives
inside it, TP all-reduces or the colocated bridge's all-gather, are issued in the same
order everywhere), and it starts only after the operations it receives data from have
finished. Each rank's list is thus a restriction of one global order; with non-blocking
sends, executing the lists cannot deadlock.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from ...config import JobConfig
from ...errors import UserError
from ...layout import MimoParallelismConfig

Role = tuple[str, int]  # (module, pipeline stage)

ENCODER_RUN_AHEAD = 1
"""Extra micro-batches in flight on an encoder with ranks of its own (see the module docstring)."""


@dataclass(frozen=True, order=True)
class Op:
    kind: str  # "F" or "B"
    module: str
    stage: int
    microbatch: int

    def __str__(self) -> str:
        return f"{self.kind}({self.module}{self.stage if self.stage else ''},{self.microbatch})"


def roles_of_rank(layout: MimoParallelismConfig, rank: int) -> frozenset[Role]:
    out = set()
    for name, par in layout.module_parallelisms.items():
        coords = par.coordinates(rank)
        if coords is not None:
            out.add((name, coords["pp"]))
    return frozenset(out)


class _Simulation:
    F_COST, B_COST = 1, 2

    def __init__(self, layout: MimoParallelismConfig, microbatches: int, backward: set[str]) -> None:
        self.lm = layout.language_module
        self.encoders = layout.encoder_names
        self.pp = layout.language.pp
        self.m = microbatches
        self.backward = backward
        self.offset = 1 if self.encoders else 0
        self.depth = self.offset + self.pp
        self.roles: list[Role] = [(e, 0) for e in self.encoders] + [(self.lm, s) for s in range(self.pp)]
        world = layout.world_size()
        self.workers = sorted({roles_of_rank(layout, r) for r in range(world)}, key=sorted)
        self.members = {role: [w for w in self.workers if role in w] for role in self.roles}
        self.encoders_first = layout.deployment_mode != "heterogeneous" and self.pp > 1
        self.run_ahead = ENCODER_RUN_AHEAD if layout.deployment_mode == "heterogeneous" else 0

    def position(self, role: Role) -> int:
        return 0 if role[0] != self.lm else self.offset + role[1]

    def deps(self, op: Op) -> list[Op]:
        lm, mb = self.lm, op.microbatch
        if op.kind == "F":
            if op.module == lm:
                if op.stage == 0:
                    return [Op("F", e, 0, mb) for e in self.encoders]
                return [Op("F", lm, op.stage - 1, mb)]
            return []
        own = Op("F", op.module, op.stage, mb)
        if op.module == lm:
            return [own] + ([Op("B", lm, op.stage + 1, mb)] if op.stage < self.pp - 1 else [])
        return [own, Op("B", lm, 0, mb)]

    def run(self) -> dict[frozenset[Role], list[Op]]:
        next_f = {role: 0 for role in self.roles}
        next_b = {role: 0 for role in self.roles if role[0] in self.backward}
        finished: dict[Op, int] = {}
        busy = {w: 0 for w in self.workers}
        lists: dict[frozenset[Role], list[Op]] = defaultdict(list)
        running: list[int] = []
        total = sum(self.m for _ in self.roles) + sum(self.m for _ in next_b)
        t = 0
        while len(finished) < total:
            started = False
            for op in sorted(self._candidates(next_f, next_b, finished, t), key=self._priority):
                workers = self.members[(op.module, op.stage)]
                if any(busy[w] > t for w in workers):
                    continue
                end = t + (self.F_COST if op.kind == "F" else self.B_COST)
                for w in workers:
                    busy[w] = end
                    lists[w].append(op)
                finished[op] = end
                heapq.heappush(running, end)
                (next_f if op.kind == "F" else next_b)[(op.module, op.stage)] += 1
                started = True
            future = [e for e in running if e > t]
            if not future:
                if not started and len(finished) < total:
                    raise RuntimeError("schedule simulation stalled (a dependency can never be met)")
                continue
            t = min(future)
        return dict(lists)

    def _candidates(self, next_f, next_b, finished, t):
        for role in self.roles:
            module, stage = role
            limit = self.depth - self.position(role) if role in next_b else self.m
            if module != self.lm:
                limit += self.run_ahead
            for kind, counter in (("F", next_f), ("B", next_b)):
                if role not in counter or counter[role] >= self.m:
                    continue
                op = Op(kind, module, stage, counter[role])
                if kind == "F" and role in next_b and next_f[role] - next_b[role] >= limit:
                    continue
                if all(d in finished and finished[d] <= t for d in self.deps(op)):
                    yield op

    def _priority(self, op: Op):
        encoder_forward = self.encoders_first and op.kind == "F" and op.module != self.lm
        return (not encoder_forward, op.kind != "B", op.microbatch, -self.position((op.module, op.stage)))


def build_schedule(layout: MimoParallelismConfig, microbatches: int, backward: set[str]) -> dict[frozenset[Role], list[Op]]:
    """Operation list of every distinct role set (ranks with the same roles share a list)."""
    return _Simulation(layout, microbatches, backward).run()


def backward_modules(job: JobConfig) -> set[str]:
    """Modules whose backward must run: trained encoders, and the LLM when anything trains."""
    trained_encoders = {
        name for name in job.encoders if not (job.is_frozen(name) and job.is_frozen(f"{name}_projector"))
    }
    llm = job.layout.language_module
    if not job.is_frozen(llm) or trained_encoders:
        return trained_encoders | {llm}
    raise UserError("freeze: every module and projector is frozen; there is nothing to train")
