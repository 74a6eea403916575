"""What every operation of a rank's schedule exchanges with other ranks, and in what order.

A rank runs its operation list (``schedule.py``) as

    boundary 0, op 0, boundary 1, op 1, ..., op n-1, boundary n

where boundary ``k`` posts, together, the point-to-point **sends of op k-1** (its outputs
for other ranks) and the **receives of op k** (its inputs; of op k+1 where the schedule
allows posting them one operation early, :data:`RECEIVES_AHEAD`), and op ``k`` then runs its
collectives (tensor-parallel all-reduces, the bridge's broadcast or all-to-all) and its
compute. This is megatron-core's 1F1B pairing (``send_forward_recv_backward``,
``send_backward_recv_forward`` in ``pipeline_parallel/schedules.py``) generalised to every
message of the multi-module pipeline: a rank never waits in a send while the rank it sends
to waits for this rank's next input, the circular wait that blocks NCCL when every send
has to complete before the next operation (issue #16).

:class:`RankPlan` answers, for one rank and one operation, which messages it receives
before and sends after, and which collectives it joins. The engine posts exactly these
messages; ``rendezvous.py`` replays the plans of all ranks under rendezvous semantics
(every send and collective blocks until its partners arrive) and proves the schedule
cannot deadlock. Pure Python (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...layout import MimoParallelismConfig
from ..parallel.routes import BridgeRoute, bridge_routes, group_ranks, leader, route_samples, stage_rank
from .schedule import Op, roles_of_rank


RECEIVES_AHEAD = 1
"""Receives are posted this many operations earlier than right before the operation that
needs them, where the schedule allows it (``rendezvous.step_programs``). With gloo (and
NCCL) a transfer starts only once both sides have posted it: a receive posted right before
its operation makes that operation wait for the whole exchange (~3 ms per bridge message on
CPU, issue #13) even when the sender finished long before; one operation ahead, the
transfer runs while the previous operation computes."""


@dataclass(frozen=True)
class Message:
    """One point-to-point transfer. NCCL matches the messages of a channel between two ranks
    in posting order (gloo by tag): the simulator checks both agree."""

    channel: str
    """``pipe_fwd``, ``pipe_bwd``, ``bridge_fwd`` or ``bridge_bwd`` (one communicator each)."""
    src: int
    dst: int
    microbatch: int
    """Also the tag."""
    route: BridgeRoute | None = None
    """The bridge chunk it carries (bridge channels)."""

    def __str__(self) -> str:
        return f"{self.channel} mb{self.microbatch} {self.src}->{self.dst}"


@dataclass(frozen=True)
class Collective:
    """A collective call; every member must make it, in the same order on its group."""

    ranks: tuple[int, ...]
    what: str
    op: Op | None = None


@dataclass
class Boundary:
    """The messages a rank posts between two operations, waited for together."""

    sends: list[Message] = field(default_factory=list)
    receives: list[Message] = field(default_factory=list)
    after: Op | None = None
    before: Op | None = None

    def where(self) -> str:
        parts = ([f"after {self.after}"] if self.after else []) + ([f"before {self.before}"] if self.before else [])
        return ", ".join(parts) or "at the step's start"


Event = Boundary | Collective


class RankPlan:
    """Messages and collectives of each of one rank's operations."""

    def __init__(self, layout: MimoParallelismConfig, rank: int, backward: set[str],
                 routes: dict[str, list[BridgeRoute]] | None = None) -> None:
        self.layout = layout
        self.rank = rank
        self.backward = backward
        self.lm = layout.language_module
        self.pp = layout.language.pp
        self.p2p_bridge = layout.deployment_mode == "heterogeneous"
        self.routes = routes if routes is not None else all_routes(layout)

    def _replica(self, module: str) -> int:
        return self.layout.module_parallelisms[module].coordinates(self.rank)["dp"]

    def _is_leader(self, module: str) -> bool:
        par = self.layout.module_parallelisms[module]
        return self.rank == leader(par, par.coordinates(self.rank)["dp"])

    def _enc_leader(self, route: BridgeRoute) -> int:
        return leader(self.layout.module_parallelisms[route.module], route.enc_replica)

    def _llm_leader(self, route: BridgeRoute) -> int:
        return leader(self.layout.language, route.llm_replica)

    # ---- point-to-point ------------------------------------------------------------------
    def receives(self, op: Op) -> list[Message]:
        """Messages ``op`` needs before it runs."""
        me, mb = self.rank, op.microbatch
        if op.module == self.lm:
            if op.kind == "F" and op.stage > 0:
                return [Message("pipe_fwd", stage_rank(self.layout, me, op.stage - 1), me, mb)]
            if op.kind == "B" and op.stage < self.pp - 1:
                return [Message("pipe_bwd", stage_rank(self.layout, me, op.stage + 1), me, mb)]
            if op.kind == "F" and self.p2p_bridge and self._is_leader(self.lm):
                i = self._replica(self.lm)
                return [Message("bridge_fwd", self._enc_leader(r), me, mb, r)
                        for enc in self.layout.encoder_names for r in self.routes[enc] if r.llm_replica == i]
            return []
        if op.kind == "B" and self.p2p_bridge and self._is_leader(op.module):
            j = self._replica(op.module)
            return [Message("bridge_bwd", self._llm_leader(r), me, mb, r) for r in self.routes[op.module] if r.enc_replica == j]
        return []

    def sends(self, op: Op) -> list[Message]:
        """Messages ``op`` produces for other ranks."""
        me, mb = self.rank, op.microbatch
        if op.module == self.lm:
            if op.kind == "F" and op.stage < self.pp - 1:
                return [Message("pipe_fwd", me, stage_rank(self.layout, me, op.stage + 1), mb)]
            if op.kind == "B" and op.stage > 0:
                return [Message("pipe_bwd", me, stage_rank(self.layout, me, op.stage - 1), mb)]
            if op.kind == "B" and self.p2p_bridge and self._is_leader(self.lm):
                i = self._replica(self.lm)
                return [Message("bridge_bwd", me, self._enc_leader(r), mb, r)
                        for enc in self.layout.encoder_names if enc in self.backward
                        for r in self.routes[enc] if r.llm_replica == i]
            return []
        if op.kind == "F" and self.p2p_bridge and self._is_leader(op.module):
            j = self._replica(op.module)
            return [Message("bridge_fwd", me, self._llm_leader(r), mb, r) for r in self.routes[op.module] if r.enc_replica == j]
        return []

    # ---- collectives -----------------------------------------------------------------------
    def collectives(self, op: Op) -> list[Collective]:
        """Collectives inside ``op``, in the order it makes them."""
        par = self.layout.module_parallelisms[op.module]
        tp = group_ranks(par, self.rank, ("tp", "cp"))
        compute = [Collective(tp, "tensor-parallel compute", op)] if len(tp) > 1 else []
        if op.module == self.lm:
            if op.kind == "F" and op.stage == 0 and self.p2p_bridge and len(tp) > 1:
                return [Collective(tp, f"{enc} embeddings broadcast", op) for enc in self.layout.encoder_names] + compute
            return compute
        if self.p2p_bridge:
            received = [Collective(tp, "gradient broadcast", op)] if op.kind == "B" and len(tp) > 1 else []
            return received + compute
        if op.kind == "F":
            return compute + [Collective(group_ranks(par, self.rank, ("dp",)), "bridge all-to-all", op)]
        return [Collective(group_ranks(par, self.rank, ("tp", "cp", "dp")), "bridge gradient all-to-all", op)] + compute


    def step_start(self) -> list[Collective]:
        """Collectives before the first operation: the LLM replicas agree on the global
        batch's loss-token count."""
        if self.layout.language.coordinates(self.rank) is None:
            return []
        return [Collective(group_ranks(self.layout.language, self.rank, ("cp", "dp")), "loss tokens")]

    def step_end(self) -> list[Collective]:
        """After the last operation every rank joins the step's consensus all-reduce."""
        return [Collective(tuple(range(self.layout.world_size())), "step consensus")]

    def program(self, ops: list[Op], receives_ahead: int = 0) -> "StepProgram":
        """The default placement: each op's sends at the boundary right after it, each op's
        receives ``receives_ahead`` boundaries before the one right before it
        (``rendezvous.step_programs`` moves what would deadlock)."""
        inputs = [self.receives(op) for op in ops]

        def posted(k: int) -> list[Message]:  # the receives of boundary k
            first = 0 if k == 0 else k + receives_ahead
            return [m for got in inputs[first : k + receives_ahead + 1] for m in got]

        boundaries = [Boundary([], posted(0), None, ops[0] if ops else None)]
        for k, op in enumerate(ops):
            nxt = ops[k + 1] if k + 1 < len(ops) else None
            boundaries.append(Boundary(self.sends(op), posted(k + 1), op, nxt))
        return StepProgram(list(ops), boundaries, inputs, [self.sends(op) for op in ops],
                           [self.collectives(op) for op in ops], self.step_start(), self.step_end())


@dataclass
class StepProgram:
    """One rank's step: ``boundaries[k]`` comes before ``ops[k]``, the last one after the last op."""

    ops: list[Op]
    boundaries: list[Boundary]
    inputs: list[list[Message]]
    """Per op, the messages it receives (posted at this or an earlier boundary)."""
    outputs: list[list[Message]]
    """Per op, the messages it sends (posted at a later boundary)."""
    collectives: list[list[Collective]]
    """Per op, the collectives it makes."""
    start: list[Collective]
    end: list[Collective]

    def events(self) -> list[Event]:
        out: list[Event] = [*self.start]
        for k, boundary in enumerate(self.boundaries):
            out.append(boundary)
            if k < len(self.ops):
                out.extend(self.collectives[k])
        return out + self.end


def all_routes(layout: MimoParallelismConfig, samples: int | None = None) -> dict[str, list[BridgeRoute]]:
    """Every encoder's bridge chunks for micro-batches of ``samples`` (any size the dp sizes
    divide: the default is the smallest)."""
    samples = samples or route_samples(layout)
    return {name: bridge_routes(layout, name, samples) for name in layout.encoder_names}


def rank_ops(schedule: dict, layout: MimoParallelismConfig, rank: int) -> list[Op]:
    """This rank's operation list from ``build_schedule``'s result."""
    return schedule.get(roles_of_rank(layout, rank), [])
