"""torch.distributed.checkpoint (DCP) with boxes that each rank declares itself.

DCP stores every tensor of a state dict as chunks (an offset and a size in the full tensor)
in per-rank files plus one ``.metadata`` index, and on load reads, for each chunk a rank
asks for, the overlapping parts of whatever chunks were saved: that is resharding. It learns
a tensor's chunks from DTensor or ShardedTensor. megatron-core's tensor-parallel split (a
strided SwiGLU split, vocabulary padding that depends on TP) and a distributed optimizer's
flat shards are neither, so each rank states its boxes directly (:class:`Boxes`, computed in
``canonical``) and two small planners, DCP's documented extension point, turn them into write
and read items. Everything else (per-rank files, deduplication of boxes offered by several
ranks, the coverage check of the global plan, the ``.metadata`` index) is DCP's own, and the
result is an ordinary DCP checkpoint: ``torch.distributed.checkpoint.format_utils`` or any
DCP reader gets full tensors from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    DefaultSavePlanner,
    create_default_local_load_plan,
    create_default_local_save_plan,
)
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from ...errors import UserError


@dataclass
class Boxes:
    """This rank's boxes of one full tensor: canonical offsets -> a tensor of the box's shape
    (the data to write, or the destination to read into)."""

    size: tuple[int, ...]
    dtype: torch.dtype
    boxes: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)


class BoxSavePlanner(DefaultSavePlanner):
    """Write items for :class:`Boxes` values (one shard per box); DCP's defaults for the rest."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def create_local_plan(self) -> SavePlan:
        plain = {k: v for k, v in self.state_dict.items() if not isinstance(v, Boxes)}
        items = list(create_default_local_save_plan(plain, self.is_coordinator).items)
        for fqn, value in self.state_dict.items():
            if isinstance(value, Boxes):
                items += [_write_item(fqn, value, offsets, t) for offsets, t in value.boxes.items()]
        self.plan = SavePlan(items)
        return self.plan

    def lookup_object(self, index: MetadataIndex):
        value = self.state_dict[index.fqn]
        if isinstance(value, Boxes):
            return value.boxes[tuple(index.offset)]
        return super().lookup_object(index)


def _write_item(fqn: str, value: Boxes, offsets: tuple[int, ...], tensor: torch.Tensor) -> WriteItem:
    chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.shape)
    return WriteItem(
        index=MetadataIndex(fqn, torch.Size(offsets)),
        type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(chunk=chunk, properties=TensorProperties(dtype=value.dtype),
                                    size=torch.Size(value.size)),
    )


class BoxLoadPlanner(DefaultLoadPlanner):
    """Read items for :class:`Boxes` destinations; DCP's defaults for the rest (plain tensors
    are read whole, other objects are unpickled into the state dict)."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict: dict, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        # The default set-up rebuilds the state dict and drops values it does not know (Boxes).
        self.original_state_dict = self.state_dict = state_dict
        self.metadata = metadata
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> LoadPlan:
        missing = [k for k in self.state_dict if k not in self.metadata.state_dict_metadata]
        if missing:
            raise UserError(f"the checkpoint has no {missing[0]!r}"
                            f"{f' (and {len(missing) - 1} more keys)' if len(missing) > 1 else ''}: "
                            "it was written by another model")
        plain = {k: v for k, v in self.state_dict.items() if not isinstance(v, Boxes)}
        requests = list(create_default_local_load_plan(plain, self.metadata).items)
        for fqn, value in self.state_dict.items():
            if isinstance(value, Boxes):
                stored = self.metadata.state_dict_metadata[fqn]
                _check_shape(fqn, stored, value)
                chunks = [ChunkStorageMetadata(torch.Size(o), t.shape) for o, t in value.boxes.items()]
                requests += create_read_items_for_chunk_list(fqn, stored, chunks)
        return LoadPlan(requests)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        value = self.state_dict[index.fqn]
        if isinstance(value, Boxes):
            return value.boxes[tuple(index.offset)]
        return super().lookup_tensor(index)


def _check_shape(fqn: str, stored, value: Boxes) -> None:
    if not isinstance(stored, TensorStorageMetadata) or tuple(stored.size) != tuple(value.size):
        have = tuple(stored.size) if isinstance(stored, TensorStorageMetadata) else "not a tensor"
        raise UserError(f"the checkpoint's {fqn!r} is {have}, this model's is {tuple(value.size)}: "
                        "it was written by another model")


def save(state: dict, path, group) -> None:
    """Write ``state`` (Boxes, tensors, picklable objects) as one DCP checkpoint at ``path``.
    A collective over ``group``; fails on every rank if any rank's write failed."""
    writer = dcp.FileSystemWriter(str(path), single_file_per_rank=True, sync_files=True, thread_count=1)
    dcp.save(state, storage_writer=writer, planner=BoxSavePlanner(), process_group=group)


def load(state: dict, path, group=None) -> None:
    """Fill ``state``'s Boxes and tensors in place (and its other entries by value) from ``path``.
    A collective over ``group``; ``group=None``: this process alone (no process group needed)."""
    reader = dcp.FileSystemReader(str(path))
    dcp.load(state, storage_reader=reader, planner=BoxLoadPlanner(), process_group=group, no_dist=group is None)


def read_index(path) -> Metadata:
    """The checkpoint's ``.metadata``: every key with its full shape, dtype and chunks."""
    return dcp.FileSystemReader(str(path)).read_metadata()
