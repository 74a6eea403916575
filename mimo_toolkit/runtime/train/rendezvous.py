"""Replay every rank's step under rendezvous semantics: place messages, find deadlocks.

The model is the strictest a real backend imposes: each rank runs its events
(``plan.StepProgram.events``) one after another; a boundary completes only when every send
and receive in it has met its partner, which must be posted in the partner's current
boundary (an unbuffered send: NCCL's once the host synchronises, gloo's always); a
collective completes when every member of its group has arrived at it. NCCL pairs the
messages of a channel between two ranks in posting order (it ignores tags): both sides must
post them in the same order. The members of a group must make the same collectives in the
same order.

A program that completes here completes under any weaker semantics too, and the engine's
are weaker: it waits for a receive only when an operation needs it and for its sends at the
step's end; on CUDA the host never blocks and the streams wait for a subset of the events
below (a communicator's stream runs its operations in posting order, which the sequence of
boundaries already implies). Dropping a wait can only make an event complete earlier.

:func:`step_programs` turns the default placement (each op's sends right after it, its
receives right before it) into one that completes, by replaying it and resolving each
circular wait the only way that keeps data flowing forward: a receiver stuck at an earlier
boundary takes the message there (the data waits in a buffer until its operation runs); a
receiver stuck in a collective the sender must join first gets it after that collective.
Example (LLM pp2 colocated with a vision encoder whose backward is a collective over both
ranks): stage 0 sends micro-batch 2's activations while stage 1 sends micro-batch 1's
gradient, both before the encoder's backward; each now receives the other's message at that
same boundary, as megatron-core's ``send_forward_recv_backward`` pairs them.

Every rank computes the same placement (a deterministic replay of all ranks); the tests run
:func:`check_schedule` over every preset and every layout of the equivalence tests.
"""

from __future__ import annotations

from collections import defaultdict, deque

from ...layout import MimoParallelismConfig
from .plan import RECEIVES_AHEAD, Boundary, Collective, Event, Message, RankPlan, StepProgram, all_routes, rank_ops
from .schedule import build_schedule


class ScheduleError(RuntimeError):
    """The ranks' step programs deadlock or disagree."""


class Replay:
    """Runs the programs of all ranks (event lists); :meth:`run` raises :class:`ScheduleError`
    on a deadlock, or with ``repair`` moves messages until none is left."""

    def __init__(self, programs: dict[int, list[Event]]) -> None:
        self.programs = programs
        self.send_at: dict[Message, int] = {}
        self.recv_at: dict[Message, int] = {}
        for rank, events in programs.items():
            for index, event in enumerate(events):
                if isinstance(event, Boundary):
                    self.send_at.update((m, index) for m in event.sends)
                    self.recv_at.update((m, index) for m in event.receives)
        for m in self.send_at.keys() ^ self.recv_at.keys():
            side = "received" if m in self.send_at else "sent"
            raise ScheduleError(f"{m} is never {side}")
        self.collective_at: dict[tuple[int, int], dict[int, int]] = {}
        self._pair_collectives()

    def _pair_collectives(self) -> None:
        calls: dict[tuple[int, ...], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for rank, events in self.programs.items():
            for index, event in enumerate(events):
                if isinstance(event, Collective):
                    calls[event.ranks][rank].append(index)
        for group, per_rank in calls.items():
            counts = {rank: len(per_rank.get(rank, [])) for rank in group}
            if len(set(counts.values())) != 1:
                raise ScheduleError(f"group {list(group)} makes different numbers of collectives per rank: {counts}")
            for k in range(counts[group[0]]):
                at = {rank: per_rank[rank][k] for rank in group}
                names = {self._describe(rank, index) for rank, index in at.items()}
                if len(names) != 1:
                    raise ScheduleError(f"group {list(group)}: collective #{k + 1} differs between ranks: {sorted(names)}")
                for rank, index in at.items():
                    self.collective_at[(rank, index)] = at

    def check_order(self) -> None:
        """Both sides post the messages of a channel between two ranks in the same order."""
        sent, received = defaultdict(list), defaultdict(list)
        for m in sorted(self.send_at, key=lambda m: self.send_at[m]):
            sent[(m.src, m.dst, m.channel)].append(m)
        for m in sorted(self.recv_at, key=lambda m: self.recv_at[m]):
            received[(m.src, m.dst, m.channel)].append(m)
        for key, order in sent.items():
            for s, r in zip(order, received[key]):
                if s != r:
                    raise ScheduleError(f"message order differs: rank {s.src} sends {s} ({self._describe(s.src, self.send_at[s])}) "
                                        f"where rank {r.dst} receives {r} ({self._describe(r.dst, self.recv_at[r])})")

    # ---- the replay ------------------------------------------------------------------------
    def run(self, repair: bool = False) -> None:
        self.pc = {rank: 0 for rank in self.programs}
        self.matched: set[Message] = set()
        self.arrivals: dict[int, int] = defaultdict(int)  # collective instance -> members arrived
        self.counted: dict[int, int] = {}  # rank -> the event at which its arrival was counted
        work = deque(self.programs)
        while True:
            while work:
                self._advance(work.popleft(), work)
            stuck = [rank for rank, events in self.programs.items() if self.pc[rank] < len(events)]
            if not stuck:
                return
            moved = self._repair(stuck) if repair else []
            if not moved:
                raise ScheduleError(self._deadlock_report(stuck))
            work.extend(moved)

    def _advance(self, rank: int, work: deque) -> None:
        """Run ``rank`` as far as it can go; queue the ranks its progress may release."""
        events = self.programs[rank]
        while self.pc[rank] < len(events):
            index = self.pc[rank]
            event = events[index]
            if isinstance(event, Collective):
                members = self.collective_at[(rank, index)]
                if self.counted.get(rank) != index:
                    self.counted[rank] = index
                    self.arrivals[id(members)] += 1
                if self.arrivals[id(members)] < len(members):
                    return
                for r in members:
                    self.pc[r] += 1
                work.extend(r for r in members if r != rank)
                continue
            for m in [*event.sends, *event.receives]:
                if m not in self.matched and self.pc[m.src] == self.send_at[m] and self.pc[m.dst] == self.recv_at[m]:
                    self.matched.add(m)
                    work.append(m.dst if m.src == rank else m.src)
            if not all(m in self.matched for m in [*event.sends, *event.receives]):
                return
            self.pc[rank] += 1

    def _repair(self, stuck: list[int]) -> list[int]:
        """Move the messages that keep stuck sends from meeting their receives (see the module
        docstring); the ranks whose programs changed."""
        moved = []
        for rank in stuck:
            event = self.programs[rank][self.pc[rank]]
            if not isinstance(event, Boundary):
                continue
            for m in [m for m in event.sends if m not in self.matched]:
                at = self.pc[m.dst]
                there = self.programs[m.dst][at] if at < len(self.programs[m.dst]) else None
                if isinstance(there, Boundary) and at < self.recv_at[m]:
                    self._move(m, m.dst, self.recv_at, at, "receives")
                elif isinstance(there, Collective):
                    later = next(i for i in range(self.pc[rank] + 1, len(self.programs[rank]))
                                 if isinstance(self.programs[rank][i], Boundary))
                    self._move(m, rank, self.send_at, later, "sends")
                else:
                    continue
                moved += [rank, m.dst]
        return moved

    def _move(self, m: Message, rank: int, at: dict[Message, int], index: int, side: str) -> None:
        getattr(self.programs[rank][at[m]], side).remove(m)
        target: list[Message] = getattr(self.programs[rank][index], side)
        target.append(m)
        target.sort(key=lambda x: (x.channel, x.src, x.dst, x.microbatch))
        at[m] = index

    # ---- reporting -------------------------------------------------------------------------
    def _describe(self, rank: int, index: int) -> str:
        if index >= len(self.programs[rank]):
            return "finished"
        event = self.programs[rank][index]
        if isinstance(event, Collective):
            return event.what + (f" in {event.op}" if event.op else "")
        return f"boundary {event.where()}"

    def _waits_for(self, rank: int) -> list[tuple[int, str]]:
        """(other rank, what this rank waits for from it)."""
        index = self.pc[rank]
        event = self.programs[rank][index]
        if isinstance(event, Collective):
            return [(r, f"{event.what} with rank {r}") for r, i in self.collective_at[(rank, index)].items() if self.pc[r] != i]
        out = [(m.dst, f"sending {m}") for m in event.sends if m not in self.matched]
        return out + [(m.src, f"receiving {m}") for m in event.receives if m not in self.matched]

    def _deadlock_report(self, stuck: list[int]) -> str:
        cycle = self._cycle(stuck)
        lines = [f"deadlock: {len(stuck)} rank(s) wait for each other forever under rendezvous semantics"
                 + (", in a cycle of:" if cycle else ":")]
        for rank in cycle or stuck:
            waits = "; ".join(what for _, what in self._waits_for(rank))
            lines.append(f"  rank {rank} at {self._describe(rank, self.pc[rank])}: {waits}")
        return "\n".join(lines)

    def _cycle(self, stuck: list[int]) -> list[int]:
        """Ranks each waiting for the next, back to the first (the heart of the deadlock)."""
        for start in stuck:
            path, seen, rank = [], {}, start
            while rank not in seen:
                seen[rank] = len(path)
                path.append(rank)
                waits = [r for r, _ in self._waits_for(rank) if self.pc[r] < len(self.programs[r])]
                if not waits:
                    break
                rank = waits[0]
            else:
                return path[seen[rank]:]
        return []


def default_programs(layout: MimoParallelismConfig, microbatches: int, backward: set[str],
                     samples: int | None = None, receives_ahead: int = 0) -> dict[int, StepProgram]:
    """Every rank's step with the default placement (before :func:`step_programs` repairs it)."""
    schedule = build_schedule(layout, microbatches, backward)
    routes = all_routes(layout, samples)
    return {rank: RankPlan(layout, rank, backward, routes).program(rank_ops(schedule, layout, rank), receives_ahead)
            for rank in range(layout.world_size())}


def replay(programs: dict[int, StepProgram], repair: bool = False) -> None:
    """Replay step programs (moving messages where ``repair``); raise :class:`ScheduleError` on failure."""
    events = {rank: program.events() for rank, program in programs.items()}
    run = Replay(events)
    run.run(repair)
    if repair:  # the placement found must pass on its own: pairings, order, completion
        run = Replay(events)
        run.run()
    run.check_order()


def step_programs(layout: MimoParallelismConfig, microbatches: int, backward: set[str],
                  samples: int | None = None) -> dict[int, StepProgram]:
    """Every rank's step program with messages placed so that it cannot deadlock: receives
    posted :data:`~.plan.RECEIVES_AHEAD` operations early where that placement completes
    (every rank's, under rendezvous semantics), else right before their operations."""
    try:
        programs = default_programs(layout, microbatches, backward, samples, RECEIVES_AHEAD)
        replay(programs, repair=True)
        return programs
    except ScheduleError:
        programs = default_programs(layout, microbatches, backward, samples)
        replay(programs, repair=True)
        return programs


def check_schedule(layout: MimoParallelismConfig, microbatches: int, backward: set[str]) -> None:
    """Raise :class:`ScheduleError` if one step of ``layout`` can deadlock or mismatch."""
    step_programs(layout, microbatches, backward)
