"""The module bridge: encoder embeddings to the LLM's first stage, and their gradients back.

Each encoder replica holds the embeddings of its samples of a micro-batch, each LLM replica
needs those of its own samples; :mod:`.routes` cuts the micro-batch into the chunks the two
share. Both sides know every chunk's size from their own data (tokens per sample on the
encoder side, placeholder counts on the LLM side), so no shapes are exchanged, and shapes
may change from one micro-batch to the next.

* :class:`P2PBridge` (heterogeneous, disjoint ranks): the TP-rank-0 leader of each encoder
  replica sends each chunk to the leader of the LLM replica that needs it, as messages of
  the step program (``train/plan.py``: the engine posts them); the LLM leader broadcasts
  the concatenation to its TP group. Gradients travel back the same way, only for encoders
  whose encoder or projector trains.
* :class:`CollectiveBridge` (colocated and homogeneous: every module spans every rank): one
  ``all_to_all`` over the encoder's data-parallel group moves each chunk straight to the
  ranks of the LLM's first stage that need it, and one over all the encoder's ranks brings
  each sample's gradient from the one rank that holds it (TP rank 0 of the first stage of
  its LLM replica) to its encoder replica: exact sizes, the model's dtype, no padding and no
  full-micro-batch buffer on any rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...layout import MimoParallelismConfig
from ..datasets.batching import MediaBatch, TextBatch
from .routes import BridgeRoute, bridge_routes, leader, replica_samples


@dataclass
class BridgeStats:
    forward_bytes: int = 0
    backward_bytes: int = 0


class _Bridge:
    """What both bridges know: the layout, this rank's groups, the micro-batch size ``M`` and
    the LLM's hidden size and dtype (every bridged tensor is ``[tokens, hidden]``)."""

    def __init__(self, layout: MimoParallelismConfig, pgcs: dict, micro_batch: int, hidden: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.layout = layout
        self.pgcs = pgcs
        self.M = micro_batch
        self.hidden = hidden
        self.dtype = dtype
        self.device = device
        self.stats = BridgeStats()
        self.rank = dist.get_rank()

    def _first_sample(self, module: str) -> int:
        par = self.layout.module_parallelisms[module]
        return replica_samples(par.coordinates(self.rank)["dp"], par.dp, self.M).start

    def _enc_rows(self, route: BridgeRoute, media: MediaBatch) -> range:
        return route.rows(media.tokens_per_sample, self._first_sample(route.module))

    def _llm_rows(self, route: BridgeRoute, text: TextBatch) -> range:
        return route.rows(text.placeholders[route.module], self._first_sample(self.layout.language_module))

    def _empty(self, rows: int) -> torch.Tensor:
        return torch.empty(rows, self.hidden, dtype=self.dtype, device=self.device)

    def begin_step(self, texts: list[TextBatch] | None) -> None:
        """Called before every step with this rank's text batches (None on encoder-only ranks)."""

    def end_step(self) -> None:
        """Called after every step (the collective bridge forgets frozen encoders' leftovers)."""


class P2PBridge(_Bridge):
    """Encoder and LLM on disjoint ranks: the step program's bridge messages, then a broadcast."""

    # ---- encoder side --------------------------------------------------------------------
    def send_forward(self, module: str, mb: int, embeddings: torch.Tensor, media: MediaBatch, messages) -> list:
        out = []
        for m in messages:
            rows = self._enc_rows(m.route, media)
            chunk = embeddings[rows.start : rows.stop].detach()
            self.stats.forward_bytes += chunk.numel() * chunk.element_size()
            out.append((m, chunk))
        return out

    def backward_buffer(self, message, media: MediaBatch) -> torch.Tensor:
        return self._empty(len(self._enc_rows(message.route, media)))

    def gradient(self, module: str, mb: int, media: MediaBatch, parts: list[torch.Tensor]) -> torch.Tensor:
        """This replica's embedding gradient: the leader's received chunks, broadcast over TP."""
        return self._join(module, parts, sum(media.tokens_per_sample))

    # ---- LLM side ------------------------------------------------------------------------
    def forward_buffer(self, message, text: TextBatch) -> torch.Tensor:
        return self._empty(len(self._llm_rows(message.route, text)))

    def embeddings(self, module: str, mb: int, text: TextBatch, parts: list[torch.Tensor]) -> torch.Tensor:
        """This LLM replica's embeddings of ``module``: the leader's chunks, broadcast over TP."""
        return self._join(self.layout.language_module, parts, sum(text.placeholders[module]))

    def send_backward(self, module: str, mb: int, grad: torch.Tensor, text: TextBatch, messages) -> list:
        out = []
        for m in messages:
            rows = self._llm_rows(m.route, text)
            chunk = grad[rows.start : rows.stop]
            self.stats.backward_bytes += chunk.numel() * chunk.element_size()
            out.append((m, chunk))
        return out

    def _join(self, module: str, parts: list[torch.Tensor], total: int) -> torch.Tensor:
        """The module leader's received chunks, broadcast to the rest of its TP group."""
        par, tp = self.layout.module_parallelisms[module], self.pgcs[module].tp
        if self.rank == leader(par, par.coordinates(self.rank)["dp"]):
            joined = torch.cat(parts) if parts else self._empty(0)
        else:
            joined = self._empty(total)
        if tp.size() > 1 and joined.numel():
            dist.broadcast(joined, src=dist.get_global_rank(tp, 0), group=tp)
        return joined


class CollectiveBridge(_Bridge):
    """Encoders and LLM on the same ranks (colocated or homogeneous): two all-to-alls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stash: dict[tuple, torch.Tensor] = {}
        self.routes = {name: {(r.enc_replica, r.llm_replica): r for r in bridge_routes(self.layout, name, self.M)}
                       for name in self.layout.encoder_names}
        # Whether anything crosses ranks in each exchange. Where every chunk stays on its rank
        # (homogeneous with equal dp, e.g. vision dp2 / llm dp2), the all-to-all would only
        # copy locally, yet make the replicas wait for each other twice per micro-batch.
        # From the layout alone, so every member of a group decides the same.
        self.crosses = {}
        for name in self.layout.encoder_names:
            fwd, bwd = _members(self.pgcs[name].dp), _members(self.pgcs[name].tp_dp_cp)
            self.crosses[("fwd", name)] = any(
                a != b and self._is_first_stage(b) and self._route(name, a, b) for a in fwd for b in fwd)
            self.crosses[("bwd", name)] = any(
                a != b and self._is_gradient_holder(a) and self._route(name, b, a) for a in bwd for b in bwd)

    def _coords(self, rank: int, module: str) -> dict[str, int]:
        return self.layout.module_parallelisms[module].coordinates(rank)

    def _route(self, module: str, enc_rank: int, llm_rank: int) -> BridgeRoute | None:
        j, i = self._coords(enc_rank, module)["dp"], self._coords(llm_rank, self.layout.language_module)["dp"]
        return self.routes[module].get((j, i))

    def _is_first_stage(self, rank: int) -> bool:
        return self._coords(rank, self.layout.language_module)["pp"] == 0

    def _is_gradient_holder(self, rank: int) -> bool:
        lm = self.layout.language
        return rank == leader(lm, lm.coordinates(rank)["dp"])

    def begin_step(self, texts: list[TextBatch] | None) -> None:
        """This step's text batches: their placeholder counts size the LLM side's chunks."""
        self._texts = texts

    def send_forward(self, module: str, mb: int, embeddings: torch.Tensor, media: MediaBatch, messages) -> list:
        """All-to-all over the encoder's dp group: each member that runs the LLM's first stage
        gets the rows of the samples its LLM replica shares with this encoder replica."""
        group = self.pgcs[module].dp
        send, recv = [], []
        for other in _members(group):
            out_route = self._route(module, self.rank, other) if self._is_first_stage(other) else None
            send.append(self._enc_rows(out_route, media) if out_route else range(0))
            in_route = self._route(module, other, self.rank) if self._is_first_stage(self.rank) else None
            recv.append(len(self._llm_rows(in_route, self._texts[mb])) if in_route else 0)
        received = self._all_to_all(embeddings.detach(), send, recv, group, self.crosses[("fwd", module)])
        self.stats.forward_bytes += self._foreign_bytes(send, group)
        if self._is_first_stage(self.rank):
            self._stash[("fwd", module, mb)] = received
        return []

    def embeddings(self, module: str, mb: int, text: TextBatch, parts: list) -> torch.Tensor:
        return self._stash.pop(("fwd", module, mb))

    def send_backward(self, module: str, mb: int, grad: torch.Tensor, text: TextBatch, messages) -> list:
        self._stash[("bwd", module, mb)] = grad
        return []

    def gradient(self, module: str, mb: int, media: MediaBatch, parts: list) -> torch.Tensor:
        """All-to-all over all the encoder's ranks: each sample's gradient goes from its holder
        (TP rank 0 of its LLM replica's first stage) to every rank of its encoder replica."""
        group = self.pgcs[module].tp_dp_cp
        grad = self._stash.pop(("bwd", module, mb), None)
        holder = grad is not None and self._is_gradient_holder(self.rank)
        send, recv = [], []
        for other in _members(group):
            out_route = self._route(module, other, self.rank) if holder else None
            send.append(self._llm_rows(out_route, self._texts[mb]) if out_route else range(0))
            in_route = self._route(module, self.rank, other) if self._is_gradient_holder(other) else None
            recv.append(len(self._enc_rows(in_route, media)) if in_route else 0)
        received = self._all_to_all(grad if holder else self._empty(0), send, recv, group, self.crosses[("bwd", module)])
        self.stats.backward_bytes += self._foreign_bytes(send, group)
        return received

    def _all_to_all(self, source: torch.Tensor, send: list[range], recv: list[int], group,
                    crosses: bool = True) -> torch.Tensor:
        """Rows ``send[g]`` of ``source`` to member ``g``; ``recv[g]`` rows from it, in member
        order. Without ``crosses`` only this rank's own chunk can be non-empty: a local copy."""
        if not crosses:
            rows = send[_members(group).index(self.rank)]
            return source[rows.start : rows.stop].to(self.dtype, copy=True)
        chunks = [source[rows.start : rows.stop] for rows in send]
        data = torch.cat([source.new_empty(0, self.hidden), *chunks]).to(self.dtype).contiguous()
        out = self._empty(sum(recv))
        dist.all_to_all_single(out, data, recv, [len(rows) for rows in send], group=group)
        return out

    def _foreign_bytes(self, send: list[range], group) -> int:
        element = torch.finfo(self.dtype).bits // 8
        return sum(len(rows) for rows, r in zip(send, _members(group)) if r != self.rank) * self.hidden * element

    def end_step(self) -> None:
        """Forget what frozen encoders (no backward) left behind."""
        self._stash.clear()


def _members(group: dist.ProcessGroup) -> list[int]:
    """Global ranks of a group, in group-rank order (the order of an all-to-all's chunks)."""
    return [dist.get_global_rank(group, g) for g in range(group.size())]


def make_bridge(layout: MimoParallelismConfig, pgcs: dict, micro_batch: int, hidden: int,
                dtype: torch.dtype, device: torch.device) -> _Bridge:
    cls = P2PBridge if layout.deployment_mode == "heterogeneous" else CollectiveBridge
    return cls(layout, pgcs, micro_batch, hidden, dtype, device)
