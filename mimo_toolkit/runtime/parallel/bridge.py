"""The module bridge: encoder embeddings to the LLM's first stage, and their gradients back.

An encoder replica ``j`` of ``dp_e`` holds the embeddings of samples ``[j*M/dp_e, ...)`` of a
global micro-batch of ``M`` samples; LLM replica ``i`` of ``dp_l`` needs those of samples
``[i*M/dp_l, ...)``. The two sizes divide one another, so a replica's slice is either a
concatenation of whole slices of the other side (fan-in) or a part of one (fan-out); chunks
are always taken in sample order. Both sides know every chunk's size from their own data
(tokens per sample on the encoder side, placeholder counts on the LLM side), so no shapes
are exchanged, and shapes may change from one micro-batch to the next.

* :class:`P2PBridge` (heterogeneous, disjoint ranks): the TP-rank-0 leader of each encoder
  replica sends each chunk to the leader of the LLM replica that needs it; the LLM leader
  broadcasts the concatenation to its TP group. Gradients travel back the same way, and only
  for encoders whose encoder or projector trains.
* :class:`CollectiveBridge` (colocated and homogeneous: every module spans every rank): the
  encoder's data-parallel group all-gathers the micro-batch's embeddings and each LLM replica
  takes its samples; gradients come back with one all-reduce over the encoder's ranks to
  which only each LLM replica's TP-rank-0 first stage contributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...layout import MimoParallelismConfig
from ..datasets.batching import MediaBatch, TextBatch
from .p2p import P2P


def overlap(a_rep: int, a_reps: int, b_rep: int, b_reps: int, samples: int) -> range:
    """Samples (micro-batch positions) shared by replica ``a_rep`` of ``a_reps`` and ``b_rep`` of ``b_reps``."""
    a, b = samples // a_reps, samples // b_reps
    lo, hi = max(a_rep * a, b_rep * b), min((a_rep + 1) * a, (b_rep + 1) * b)
    return range(lo, max(lo, hi))


@dataclass
class BridgeStats:
    forward_bytes: int = 0
    backward_bytes: int = 0


class _Bridge:
    """What both bridges know: the layout, this rank's groups, the micro-batch size ``M`` and
    the LLM's hidden size and dtype (every bridged tensor is ``[tokens, hidden]``)."""

    def __init__(self, layout: MimoParallelismConfig, p2p: P2P, pgcs: dict, micro_batch: int, hidden: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.layout = layout
        self.p2p = p2p
        self.pgcs = pgcs
        self.M = micro_batch
        self.hidden = hidden
        self.dtype = dtype
        self.device = device
        self.stats = BridgeStats()
        self.rank = dist.get_rank()

    def end_step(self) -> None:
        """Called after every step (the collective bridge forgets frozen encoders' leftovers)."""


class P2PBridge(_Bridge):
    """Encoder and LLM on disjoint ranks."""

    def _llm_leader(self, replica: int) -> int:
        return self.layout.language.rank_at(dp=replica)

    def _enc_leader(self, module: str, replica: int) -> int:
        return self.layout.module_parallelisms[module].rank_at(dp=replica)

    def _coords(self, module: str) -> dict[str, int]:
        return self.layout.module_parallelisms[module].coordinates(self.rank)

    def _enc_chunks(self, module: str, media: MediaBatch):
        """(llm replica, row range in this encoder replica's embeddings) in sample order."""
        enc_dp = self.layout.module_parallelisms[module].dp
        lm_dp = self.layout.language.dp
        j = self._coords(module)["dp"]
        first = j * (self.M // enc_dp)
        starts = [0]
        for n in media.tokens_per_sample:
            starts.append(starts[-1] + n)
        for i in range(lm_dp):
            shared = overlap(j, enc_dp, i, lm_dp, self.M)
            if len(shared):
                yield i, range(starts[shared.start - first], starts[shared.stop - first])

    def _llm_chunks(self, module: str, text: TextBatch):
        """(encoder replica, number of tokens) in sample order for this LLM replica."""
        enc_dp = self.layout.module_parallelisms[module].dp
        lm_dp = self.layout.language.dp
        i = self._coords(self.layout.language_module)["dp"]
        first = i * (self.M // lm_dp)
        counts = text.placeholders[module]
        for j in range(enc_dp):
            shared = overlap(j, enc_dp, i, lm_dp, self.M)
            if len(shared):
                yield j, sum(counts[k - first] for k in shared)

    # ---- encoder side --------------------------------------------------------------------
    def send_forward(self, module: str, mb: int, embeddings: torch.Tensor, media: MediaBatch) -> None:
        if self._coords(module)["tp"] != 0:
            return
        for i, rows in self._enc_chunks(module, media):
            chunk = embeddings[rows.start : rows.stop].detach()
            self.p2p.send(chunk, self._llm_leader(i), "bridge_fwd", tag=mb)
            self.stats.forward_bytes += chunk.numel() * chunk.element_size()

    def recv_backward(self, module: str, mb: int, media: MediaBatch) -> torch.Tensor:
        pgc = self.pgcs[module]
        total = sum(media.tokens_per_sample)
        if self._coords(module)["tp"] == 0:
            parts = [
                self.p2p.recv((len(rows), self.hidden), self.dtype, self.device, self._llm_leader(i), "bridge_bwd", tag=mb)
                for i, rows in self._enc_chunks(module, media)
            ]
            grad = torch.cat(parts) if parts else torch.empty(0, self.hidden, dtype=self.dtype, device=self.device)
        else:
            grad = torch.empty(total, self.hidden, dtype=self.dtype, device=self.device)
        return _broadcast_from_first(grad, pgc.tp)

    # ---- LLM side ------------------------------------------------------------------------
    def recv_forward(self, module: str, mb: int, text: TextBatch) -> torch.Tensor:
        pgc = self.pgcs[self.layout.language_module]
        chunks = list(self._llm_chunks(module, text))
        total = sum(n for _, n in chunks)
        if self._coords(self.layout.language_module)["tp"] == 0:
            parts = [
                self.p2p.recv((n, self.hidden), self.dtype, self.device, self._enc_leader(module, j), "bridge_fwd", tag=mb)
                for j, n in chunks
            ]
            emb = torch.cat(parts) if parts else torch.empty(0, self.hidden, dtype=self.dtype, device=self.device)
        else:
            emb = torch.empty(total, self.hidden, dtype=self.dtype, device=self.device)
        return _broadcast_from_first(emb, pgc.tp)

    def send_backward(self, module: str, mb: int, grad: torch.Tensor, text: TextBatch) -> None:
        if self._coords(self.layout.language_module)["tp"] != 0:
            return
        offset = 0
        for j, n in self._llm_chunks(module, text):
            chunk = grad[offset : offset + n]
            offset += n
            self.p2p.send(chunk, self._enc_leader(module, j), "bridge_bwd", tag=mb)
            self.stats.backward_bytes += chunk.numel() * chunk.element_size()


class CollectiveBridge(_Bridge):
    """Encoders and LLM on the same ranks (colocated or homogeneous)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stash: dict[tuple, object] = {}

    def _gather_counts(self, module: str, media: MediaBatch) -> list[int]:
        """Tokens of every sample of the micro-batch (all replicas), in sample order."""
        group = self.pgcs[module].dp
        mine = torch.tensor(media.tokens_per_sample, dtype=torch.long, device=self.device)
        out = [torch.empty_like(mine) for _ in range(group.size())]
        dist.all_gather(out, mine, group=group)
        return torch.cat(out).tolist()

    def _llm_rows(self, module: str, counts: list[int]) -> tuple[list[int], int]:
        """Rows of the padded gathered tensor that this rank's LLM replica needs."""
        enc_dp = self.layout.module_parallelisms[module].dp
        per_enc = self.M // enc_dp
        width = max(sum(counts[j * per_enc : (j + 1) * per_enc]) for j in range(enc_dp))
        lm_dp = self.layout.language.dp
        i = self.layout.language.coordinates(self.rank)["dp"]
        per_lm = self.M // lm_dp
        rows = []
        for k in range(i * per_lm, (i + 1) * per_lm):
            j = k // per_enc
            start = j * width + sum(counts[j * per_enc : k])
            rows.extend(range(start, start + counts[k]))
        return rows, width

    def _is_first_llm_stage(self) -> bool:
        return self.layout.language.coordinates(self.rank)["pp"] == 0

    def send_forward(self, module: str, mb: int, embeddings: torch.Tensor, media: MediaBatch) -> None:
        """All-gather the encoder outputs; first-stage LLM ranks keep their samples' rows."""
        counts = self._gather_counts(module, media)
        rows, width = self._llm_rows(module, counts)
        group = self.pgcs[module].dp
        padded = torch.zeros(width, self.hidden, dtype=self.dtype, device=self.device)
        padded[: embeddings.shape[0]] = embeddings.detach()
        gathered = [torch.empty_like(padded) for _ in range(group.size())]
        dist.all_gather(gathered, padded, group=group)
        self.stats.forward_bytes += padded.numel() * padded.element_size() * (group.size() - 1)
        if self._is_first_llm_stage():
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            self._stash[("fwd", module, mb)] = torch.cat(gathered).index_select(0, index)
        self._stash[("rows", module, mb)] = (rows, width)

    def recv_forward(self, module: str, mb: int, text: TextBatch) -> torch.Tensor:
        return self._stash.pop(("fwd", module, mb))

    def end_step(self) -> None:
        """Forget what frozen encoders (no backward) left behind."""
        self._stash.clear()

    def send_backward(self, module: str, mb: int, grad: torch.Tensor, text: TextBatch) -> None:
        self._stash[("bwd", module, mb)] = grad

    def recv_backward(self, module: str, mb: int, media: MediaBatch) -> torch.Tensor:
        """One all-reduce over the encoder's ranks: each sample's gradient comes from exactly one
        rank (TP rank 0 of the first stage of the LLM replica that holds it)."""
        rows, width = self._stash.pop(("rows", module, mb))
        enc = self.pgcs[module]
        full = torch.zeros(enc.dp.size() * width, self.hidden, dtype=torch.float32, device=self.device)
        grad = self._stash.pop(("bwd", module, mb), None)
        lm_coords = self.layout.language.coordinates(self.rank)
        if grad is not None and lm_coords["tp"] == 0 and lm_coords["cp"] == 0:
            full.index_copy_(0, torch.tensor(rows, dtype=torch.long, device=self.device), grad.float())
        dist.all_reduce(full, group=enc.tp_dp_cp)
        self.stats.backward_bytes += full.numel() * full.element_size()
        j = self.layout.module_parallelisms[module].coordinates(self.rank)["dp"]
        total = sum(media.tokens_per_sample)
        return full[j * width : j * width + total].to(self.dtype)


def _broadcast_from_first(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    if group.size() > 1 and tensor.numel():
        dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)
    return tensor


def make_bridge(layout: MimoParallelismConfig, p2p: P2P, pgcs: dict, micro_batch: int, hidden: int,
                dtype: torch.dtype, device: torch.device) -> _Bridge:
    cls = P2PBridge if layout.deployment_mode == "heterogeneous" else CollectiveBridge
    return cls(layout, p2p, pgcs, micro_batch, hidden, dtype, device)
