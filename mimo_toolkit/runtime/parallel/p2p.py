"""Point-to-point transport between ranks: pipeline activations and bridge embeddings.

Each kind of message travels on its own communicator (a duplicate of the world group,
created on every rank in a fixed order): ``pipe_fwd``, ``pipe_bwd``, ``bridge_fwd``,
``bridge_bwd``. A pair of ranks then never has a send and a receive queued behind each
other on one NCCL stream (the classic 1F1B deadlock), and gloo matches messages by tag.
Sends are non-blocking and tracked until :meth:`P2P.wait_sends`; receives block. With
sends that never block, any per-rank order of operations consistent with one global order
(``mimo_toolkit.runtime.train.schedule``) completes without deadlock.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
import torch.distributed as dist

CHANNELS = ("pipe_fwd", "pipe_bwd", "bridge_fwd", "bridge_bwd")


class P2P:
    def __init__(self, backend: str, timeout=None) -> None:
        world = list(range(dist.get_world_size()))
        self.groups = {name: dist.new_group(ranks=world, backend=backend, timeout=timeout) for name in CHANNELS}
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []
        self.bytes_sent: Counter[str] = Counter()
        self.wait_s = 0.0
        """Seconds spent blocked in receives (not compute); the engine subtracts it."""

    def send(self, tensor: torch.Tensor, dst: int, channel: str, tag: int) -> None:
        if tensor.numel() == 0:
            return
        tensor = tensor.contiguous()
        group = self.groups[channel]
        work = dist.isend(tensor, dst=dst, group=group, tag=tag)
        self._pending.append((work, tensor))  # keep the tensor alive until sent
        self.bytes_sent[channel] += tensor.numel() * tensor.element_size()

    def recv(self, shape, dtype: torch.dtype, device: torch.device, src: int, channel: str, tag: int) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype, device=device)
        if out.numel() == 0:
            return out
        group = self.groups[channel]
        start = time.perf_counter()
        dist.irecv(out, src=src, group=group, tag=tag).wait()
        self.wait_s += time.perf_counter() - start
        return out

    def wait_sends(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()
