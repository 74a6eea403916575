"""Where this rank's pieces of a tensor sit in the layout-independent (canonical) full tensor.

A checkpoint stores every parameter (and every optimizer state of it) as ONE full tensor under
a name that does not depend on the layout: the module's parameter name with global layer
numbers (pipeline stage ``p``'s layer ``i`` is global layer ``i + layers before p``, see
``init.canonical_names``) and the shape the parameter has at TP1/PP1 with the true
vocabulary (the padding rows that differ per TP size are not stored). Each rank offers the
boxes of that full tensor it holds; ``torch.distributed.checkpoint`` writes them as chunks
of one tensor and, on load, reads whatever boxes the new layout asks for. That is what makes
a checkpoint resumable on another TP, PP, DP or deployment mode.

How a local tensor maps into the full one (megatron-core's tensor-parallel split, the one
``init.shard`` reproduces):

* replicated over TP (norms, biases of row-parallel layers, encoders' embeddings): the full
  tensor itself;
* split along ``partition_dim`` with stride 1: rank ``r``'s slice starts at ``r * local``;
* stride ``s > 1`` (SwiGLU's ``linear_fc1``: each rank holds a slice of the gate AND of the
  up projection): the local tensor is viewed as ``[s, local/s, ...]`` and the full one as
  ``[s, full/s, ...]`` (at TP1 too, so the stored shape never depends on TP); rank ``r``'s
  block sits at ``r * local/s`` along the second axis;
* vocabulary tables: padded to a multiple of 128 x TP, so only the first ``vocab`` rows of
  the full tensor exist in a checkpoint; a box is clipped to them.

A flat range of a local tensor (what a distributed-optimizer shard holds of a parameter) is
not a box, but it is a few boxes (:func:`flat_boxes`): a partial row, whole rows, a partial
row, recursively. Each box is a contiguous flat range of the local tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model.init import _VOCAB_PARAMS, canonical_names, state_tensors

Box = tuple[tuple[int, ...], tuple[int, ...]]
"""(offsets, sizes) of an axis-aligned block of a tensor."""


def flat_boxes(shape: tuple[int, ...], start: int, end: int) -> list[Box]:
    """Boxes (in flat order) that exactly cover the flat range ``[start, end)`` of a
    row-major tensor of ``shape``; each box is one contiguous flat range."""
    if start >= end:
        return []
    if len(shape) <= 1:
        return [((start,), (end - start,))]
    inner = math.prod(shape[1:])
    first, last = start // inner, (end - 1) // inner
    if first == last:
        return [((first, *o), (1, *s)) for o, s in flat_boxes(shape[1:], start - first * inner, end - first * inner)]
    boxes: list[Box] = []
    if start % inner:  # a partial first row
        boxes += [((first, *o), (1, *s)) for o, s in flat_boxes(shape[1:], start % inner, inner)]
        first += 1
    tail = end - last * inner
    full_last = last if tail == inner else last - 1
    if full_last >= first:
        boxes.append(((first, *([0] * (len(shape) - 1))), (full_last - first + 1, *shape[1:])))
    if tail != inner:  # a partial last row
        boxes += [((last, *o), (1, *s)) for o, s in flat_boxes(shape[1:], 0, tail)]
    return boxes


@dataclass(frozen=True)
class Piece:
    """One box of a local tensor that has a place in the canonical full tensor."""

    flat_start: int
    """Where the box starts in the local tensor's flat order (boxes are contiguous there)."""
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    """Where the box sits in the canonical full tensor."""

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    def of(self, flat: torch.Tensor, base: int = 0) -> torch.Tensor:
        """The box's elements as a view of ``flat``: the local tensor flattened, or the part of
        it that starts at element ``base``."""
        start = self.flat_start - base
        return flat[start : start + self.numel].view(self.sizes)


@dataclass(frozen=True)
class Placement:
    """How one parameter's local tensor on this rank maps into its canonical full tensor."""

    key: str
    """Canonical name, e.g. ``decoder.layers.3.mlp.linear_fc1.weight``."""
    local_shape: tuple[int, ...]
    """The local tensor's shape, viewed (a stride-s split axis becomes two axes)."""
    full_shape: tuple[int, ...]
    """The canonical tensor's shape in the same view (vocabulary rows clipped)."""
    split_dim: int | None
    """Axis (of the view) along which tensor-parallel ranks split; None: replicated."""
    split_offset: int
    """Where this rank's block starts along ``split_dim``."""
    rows: int | None = None
    """Only the first ``rows`` entries of axis 0 are stored (true vocabulary), or None."""

    @property
    def replicated(self) -> bool:
        return self.split_dim is None

    def pieces(self, start: int = 0, end: int | None = None) -> list[Piece]:
        """The boxes of the local flat range ``[start, end)`` with their canonical offsets."""
        end = math.prod(self.local_shape) if end is None else end
        out, flat = [], start
        for offsets, sizes in flat_boxes(self.local_shape, start, end):
            numel = math.prod(sizes)
            full = list(offsets)
            if self.split_dim is not None:
                full[self.split_dim] += self.split_offset
            kept = list(sizes)
            if self.rows is not None:  # padding rows of a vocabulary table are not stored
                kept[0] = max(0, min(full[0] + sizes[0], self.rows) - full[0])
            if kept[0] > 0:  # clipping axis 0 keeps a prefix of a contiguous box
                out.append(Piece(flat, tuple(kept), tuple(full)))
            flat += numel
        return out


def placement(key: str, param: torch.Tensor, tp_rank: int, tp_size: int, vocab: int | None) -> Placement:
    """The placement of ``param`` (a megatron-core parameter) held by TP rank ``tp_rank``."""
    shape = tuple(param.shape)
    parallel = bool(getattr(param, "tensor_model_parallel", False))
    dim = getattr(param, "partition_dim", 0)
    stride = getattr(param, "partition_stride", 1) if parallel else 1
    rows = vocab if vocab is not None and key.endswith(_VOCAB_PARAMS) else None
    local = shape
    if stride > 1:  # at every TP size (megatron-core sets the stride at TP1 too): one canonical shape
        local = (*shape[:dim], stride, shape[dim] // stride, *shape[dim + 1 :])
        dim += 1
    if not (parallel and tp_size > 1):
        full = (min(local[0], rows), *local[1:]) if rows is not None else local
        return Placement(key, local, full, None, 0, rows)
    full = list(local)
    full[dim] *= tp_size
    if rows is not None:
        full[0] = rows
    return Placement(key, local, tuple(full), dim, tp_rank * local[dim], rows)


def module_placements(part: torch.nn.Module, tp_rank: int, tp_size: int, pp_rank: int,
                      vocab: int | None) -> dict[str, Placement]:
    """Local parameter (and persistent buffer) name -> placement, for one module's stage on this rank.

    A tied output layer on the last pipeline stage (megatron-core's ``shared_embedding``
    copy) is the embedding table: it gets the embedding's key, so both stages offer the same
    boxes and the checkpoint holds the table once.
    """
    names = canonical_names(part)
    out = {}
    for name, param in state_tensors(part):
        key = names[name]
        if getattr(param, "shared_embedding", False) and pp_rank > 0:
            key = "embedding.word_embeddings.weight"
        out[name] = placement(key, param, tp_rank, tp_size, vocab)
    return out
