"""Point-to-point transport between ranks: pipeline activations and bridge embeddings.

Each kind of message travels on its own communicator (a duplicate of the world group,
created on every rank in a fixed order): ``pipe_fwd``, ``pipe_bwd``, ``bridge_fwd``,
``bridge_bwd``. The engine hands :meth:`P2P.exchange` one boundary of its step program
(``mimo_toolkit.runtime.train.plan``) at a time: the sends and receives of a boundary are
posted together, one ``batch_isend_irecv`` per communicator (a single NCCL group, so a
send never waits behind a receive on the same stream), and nothing is waited for there. An
operation waits only for the receives it uses (:meth:`P2P.take`: on CUDA the stream waits,
the host does not); sends are waited for at the end of the step (:meth:`P2P.wait_sends`).
``rendezvous=True`` (``MIMO_P2P_RENDEZVOUS=1``) waits for every message of a boundary
before going on, the strict semantics the schedule is proved against; over gloo, whose
sends complete only when the receiver has posted its receive, that is a real rendezvous
run.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
import torch.distributed as dist

CHANNELS = ("pipe_fwd", "pipe_bwd", "bridge_fwd", "bridge_bwd")
RENDEZVOUS_ENV = "MIMO_P2P_RENDEZVOUS"


class _Pending:
    """A posted operation (or NCCL group), waited for at most once: a gloo work waited for a
    second time never returns."""

    def __init__(self, work: dist.Work) -> None:
        self.work = work
        self.done = False

    def wait(self) -> None:
        if not self.done:
            self.work.wait()
            self.done = True


class P2P:
    def __init__(self, backend: str, timeout=None, rendezvous: bool | None = None) -> None:
        world = list(range(dist.get_world_size()))
        self.groups = {name: dist.new_group(ranks=world, backend=backend, timeout=timeout) for name in CHANNELS}
        for group in self.groups.values():
            # NCCL: a batched p2p call may involve a subset of ranks only once the group's
            # communicator exists (torch's batch_isend_irecv note); one collective creates it.
            dist.barrier(group=group)
        self.rendezvous = os.environ.get(RENDEZVOUS_ENV) == "1" if rendezvous is None else rendezvous
        self._received: dict[object, tuple[torch.Tensor, list[_Pending]]] = {}
        self._sending: list[tuple[list[_Pending], torch.Tensor]] = []
        self.bytes_sent: Counter[str] = Counter()

    def exchange(self, sends: list[tuple[object, torch.Tensor]], receives: list[tuple[object, torch.Tensor]]) -> None:
        """Post one boundary: ``sends`` are (message, tensor), ``receives`` (message, empty
        buffer); messages have ``channel``, ``src``, ``dst`` and ``microbatch`` (the tag).
        Empty tensors are not sent (both sides know the sizes)."""
        ops: dict[str, list[tuple[dist.P2POp, object, torch.Tensor, bool]]] = {}
        for message, tensor in sends:
            if tensor.numel():
                tensor = tensor.contiguous()
                op = dist.P2POp(dist.isend, tensor, message.dst, self.groups[message.channel], message.microbatch)
                ops.setdefault(message.channel, []).append((op, message, tensor, True))
                self.bytes_sent[message.channel] += tensor.numel() * tensor.element_size()
        for message, buffer in receives:
            self._received[message] = (buffer, [])
            if buffer.numel():
                op = dist.P2POp(dist.irecv, buffer, message.src, self.groups[message.channel], message.microbatch)
                ops.setdefault(message.channel, []).append((op, message, buffer, False))
        posted: list[_Pending] = []
        for channel_ops in ops.values():
            works = [_Pending(w) for w in dist.batch_isend_irecv([op for op, *_ in channel_ops])]
            # gloo returns one work per op; NCCL one for the whole coalesced group
            per_op = [[w] for w in works] if len(works) == len(channel_ops) else [works] * len(channel_ops)
            for (_, message, tensor, is_send), pending in zip(channel_ops, per_op):
                if is_send:
                    self._sending.append((pending, tensor))  # keeps the tensor alive until sent
                else:
                    self._received[message][1].extend(pending)
            posted += works
        if self.rendezvous:
            for pending in posted:
                pending.wait()

    def take(self, message) -> torch.Tensor:
        """A received tensor, once it has arrived (the current stream waits for it on CUDA)."""
        buffer, pending = self._received.pop(message)
        for p in pending:
            p.wait()
        return buffer

    def wait_sends(self) -> None:
        for pending, _ in self._sending:
            for p in pending:
                p.wait()
        self._sending.clear()
        if self._received:
            raise RuntimeError(f"received but never used: {sorted(map(str, self._received))}")
