"""Per-module data parallelism: fp32 ``main_grad`` buffers summed over the module's dp x cp group,
optionally with the optimizer state sharded over that group (a distributed optimizer, ZeRO-1).

Two implementations with one interface:

* ``zero_grad_buffer()``, ``finish_grad_sync()`` and ``param.main_grad`` on every trainable
  parameter, as megatron-core's DDP has them;
* ``segments()``: the pieces of parameters THIS rank updates, each with its reduced fp32
  gradient and a view of where the new value goes (whole parameters without sharding; the
  rank's 1/d slice of the flat buffer with it), and ``finish_param_sync()``, which all-gathers
  the updated slices after the optimizer step (nothing to do without sharding).

Implementations:

* CUDA: megatron-core's ``DistributedDataParallel`` with the module's own ProcessGroupCollection
  (:class:`MegatronDataParallel`); with ``use_distributed_optimizer`` it reduce-scatters each
  bucket and all-gathers the parameter buffer, and the segments are each bucket's local shard
  (megatron-core's own ``shard_buffer`` split).
* CPU (gloo): :class:`PortableDataParallel`. megatron-core's DDP allocates its buffers on CUDA,
  so here each trainable parameter's gradient is accumulated (in fp32) into a view of one flat
  buffer by a post-accumulate-grad hook. Sharded, the parameters also live in one flat buffer
  (padded to a multiple of d); the gradient is reduce-scattered where the backend has it
  (gloo has no reduce-scatter: an all-reduce of the whole buffer and the local slice give the
  same numbers) and the parameters are all-gathered after the step.

Both SUM across replicas: the loss is already normalised by the number of loss tokens of the
whole global batch, so the summed gradient is the gradient of the global mean loss whatever
the data-parallel sizes of the modules are.

Overlap (CPU): the engine calls ``arm_grad_sync()`` before the step's LAST backward through
the module on this rank; from then on each bucket of gradients (a contiguous range of the
flat buffer, in backward order) starts its asynchronous all-reduce as soon as every
parameter in it has its final gradient, while the backward goes on through the earlier
layers, as torch's DDP does. ``finish_grad_sync()`` starts the buckets that did not fill
and waits for all. Buckets start strictly in order on every replica (a bucket that is
ready waits for the ones before it), so the collectives always pair up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Segment:
    """A piece of one parameter that this rank's optimizer updates."""

    param: torch.nn.Parameter
    start: int
    """First element of the piece in the parameter's flat order."""
    end: int
    grad: torch.Tensor
    """The reduced fp32 gradient of the piece (the parameter's shape when whole, else flat)."""
    value: torch.Tensor
    """Where the piece's new value goes: the parameter itself, or a flat view of its storage."""

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.param.numel()


BUCKET_MIN_ELEMENTS = 1 << 20
"""A bucket holds at least this many gradient elements (4 MiB in fp32): fewer, larger
collectives; and at most ``BUCKETS_PER_MODULE`` buckets per module."""
BUCKETS_PER_MODULE = 8


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _shard_range(total: int, size: int, rank: int) -> tuple[int, int]:
    per = total // size
    return rank * per, (rank + 1) * per


def _flat_segments(params_at: list[tuple[torch.nn.Parameter, int]], lo: int, hi: int,
                   grad: torch.Tensor, value: torch.Tensor) -> list[Segment]:
    """Segments of the parameters placed at ``offset`` in a flat buffer, cut to ``[lo, hi)``."""
    out = []
    for p, offset in params_at:
        a, b = max(offset, lo), min(offset + p.numel(), hi)
        if a < b:
            out.append(Segment(p, a - offset, b - offset, grad[a:b], value[a:b]))
    return out


class PortableDataParallel:
    """fp32 gradient buffers and their reduction over gloo (or any backend)."""

    def __init__(self, module: torch.nn.Module, dp_group: dist.ProcessGroup, shard: bool = False) -> None:
        self.module = module
        self.dp_group = dp_group
        self.params = trainable_parameters(module)
        self.size, self.rank = dp_group.size(), dp_group.rank()
        self.sharded = shard and self.size > 1
        device = self.params[0].device
        total = sum(p.numel() for p in self.params)
        if self.sharded:
            total = -(-total // self.size) * self.size  # equal shards
        self.buffer = torch.zeros(total, dtype=torch.float32, device=device)
        self.placed: list[tuple[torch.nn.Parameter, int]] = []
        offset = 0
        for p in self.params:
            p.main_grad = self.buffer[offset : offset + p.numel()].view_as(p)
            p.register_post_accumulate_grad_hook(self._accumulate)
            self.placed.append((p, offset))
            offset += p.numel()
        self.param_buffer = self._flat_parameters(total) if self.sharded else None
        self.buckets = self._buckets()
        self.bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b.params}
        self.armed = False
        self.started: list[dist.Work] = []  # all-reduces in flight, bucket by bucket in order

    def _buckets(self) -> list["_Bucket"]:
        """Whole parameters grouped from the END of the buffer (the backward produces the last
        layers' gradients first) into ranges of at least ``BUCKET_MIN_ELEMENTS``."""
        used = sum(p.numel() for p in self.params)
        size = max(BUCKET_MIN_ELEMENTS, -(-used // BUCKETS_PER_MODULE))
        buckets, current, count = [], [], 0
        for p, offset in reversed(self.placed):
            current.append((p, offset))
            count += p.numel()
            if count >= size:
                buckets.append(_Bucket(current))
                current, count = [], 0
        if current:
            buckets.append(_Bucket(current))
        return buckets

    def _accumulate(self, param: torch.Tensor) -> None:
        """Post-accumulate-grad hook: the gradient into its fp32 ``main_grad`` view; once
        armed, the bucket's all-reduce starts when its last gradient is in."""
        param.main_grad.add_(param.grad)
        param.grad = None
        if self.armed:
            bucket = self.buckets[self.bucket_of[id(param)]]
            bucket.waiting.discard(id(param))
            self._start_ready_buckets()

    def arm_grad_sync(self) -> None:
        """The next backward through this module is the step's last on this rank: start each
        bucket's all-reduce as soon as its gradients are final (see the module docstring)."""
        if self.size == 1 or (self.sharded and dist.get_backend(self.dp_group) == "nccl"):
            return
        for bucket in self.buckets:
            bucket.waiting = {id(p) for p in bucket.params if not getattr(p, "shared_embedding", False)}
            # A tied embedding split over pipeline stages gets its other half after the backward
            # (trainer._sync_tied_embeddings): its bucket never starts early.
            bucket.held = any(getattr(p, "shared_embedding", False) for p in bucket.params)
        self.armed = True
        self._start_ready_buckets()  # buckets of parameters this backward does not reach wait

    def _start_ready_buckets(self, all_of_them: bool = False) -> None:
        while len(self.started) < len(self.buckets):
            bucket = self.buckets[len(self.started)]
            if not all_of_them and (bucket.waiting or bucket.held):
                return
            self.started.append(dist.all_reduce(bucket.view(self.buffer), op=dist.ReduceOp.SUM,
                                                group=self.dp_group, async_op=True))

    def _flat_parameters(self, total: int) -> torch.Tensor:
        """Move the parameters into one flat buffer, so that one all-gather restores them all."""
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"a distributed optimizer needs one parameter dtype per module, got {dtypes}")
        buffer = torch.zeros(total, dtype=dtypes.pop(), device=self.buffer.device)
        with torch.no_grad():
            for p, offset in self.placed:
                view = buffer[offset : offset + p.numel()].view_as(p)
                view.copy_(p.data)
                p.data = view
        return buffer

    def zero_grad_buffer(self) -> None:
        self.buffer.zero_()

    def finish_grad_sync(self) -> None:
        if self.size == 1:
            return
        if self.sharded and dist.get_backend(self.dp_group) == "nccl":
            lo, hi = _shard_range(self.buffer.numel(), self.size, self.rank)
            dist.reduce_scatter_tensor(self.buffer[lo:hi], self.buffer, op=dist.ReduceOp.SUM, group=self.dp_group)
            return
        # gloo has no reduce-scatter: the whole sum, of which a sharded rank uses its slice
        # (padding past the last parameter stays zero on every replica: not reduced)
        self._start_ready_buckets(all_of_them=True)
        for work in self.started:
            work.wait()
        self.started, self.armed = [], False

    def segments(self) -> list[Segment]:
        if not self.sharded:
            return [Segment(p, 0, p.numel(), p.main_grad, p) for p in self.params]
        lo, hi = _shard_range(self.buffer.numel(), self.size, self.rank)
        return _flat_segments(self.placed, lo, hi, self.buffer, self.param_buffer)

    def finish_param_sync(self) -> None:
        """All-gather the updated shards of the parameter buffer (sharded only)."""
        if not self.sharded:
            return
        per = self.param_buffer.numel() // self.size
        shards = list(self.param_buffer.split(per))
        if dist.get_backend(self.dp_group) == "nccl":
            dist.all_gather_into_tensor(self.param_buffer, shards[self.rank].clone(), group=self.dp_group)
        else:
            dist.all_gather(shards, shards[self.rank].clone(), group=self.dp_group)


class _Bucket:
    """Whole parameters, contiguous in the flat buffer."""

    def __init__(self, placed: list[tuple[torch.nn.Parameter, int]]) -> None:
        self.params = [p for p, _ in placed]
        self.lo = min(offset for _, offset in placed)
        self.hi = max(offset + p.numel() for p, offset in placed)
        self.waiting: set[int] = set()
        """ids of the parameters whose final gradient is not in yet (once armed)"""
        self.held = False

    def view(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[self.lo : self.hi]


class MegatronDataParallel:
    """megatron-core's ``DistributedDataParallel`` (CUDA) behind the interface above.

    Sharded, megatron-core reduce-scatters each bucket's ``grad_data`` into the slice
    ``shard_buffer(bucket.grad_data, d)[rank]`` and all-gathers ``bucket.param_data`` (the
    parameters' storage) from the same slices; the segments are those slices cut at parameter
    boundaries (``bucket.param_to_index``).
    """

    def __init__(self, ddp, sharded: bool) -> None:
        self.ddp = ddp
        self.sharded = sharded
        self.params = trainable_parameters(ddp.module)

    def zero_grad_buffer(self) -> None:
        self.ddp.zero_grad_buffer()

    def arm_grad_sync(self) -> None:
        """Nothing: megatron-core's DDP here runs with ``overlap_grad_reduce=False``."""

    def finish_grad_sync(self) -> None:
        self.ddp.finish_grad_sync()

    def segments(self) -> list[Segment]:
        if not self.sharded:
            return [Segment(p, 0, p.numel(), p.main_grad, p) for p in self.params]
        out = []
        for buffer in self.ddp.buffers + self.ddp.expert_parallel_buffers:
            group = buffer.data_parallel_group
            for bucket in buffer.buckets:
                lo, hi = _shard_range(bucket.grad_data.numel(), group.size(), group.rank())
                placed = [(p, bucket.param_to_index[p][0]) for p in bucket.params_list]
                out += _flat_segments(placed, lo, hi, bucket.grad_data, bucket.param_data)
        return out

    def finish_param_sync(self) -> None:
        if self.sharded:
            self.ddp.start_param_sync(force_sync=True)


def _megatron_ddp(module: torch.nn.Module, pgc, ddp_config) -> MegatronDataParallel:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    config = copy.copy(_transformer_config_of(module))
    config.calculate_per_token_loss = True  # sum over replicas, do not average
    ddp_config = ddp_config or DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False
    )
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=module, pg_collection=pgc)
    return MegatronDataParallel(ddp, ddp_config.use_distributed_optimizer)


def _transformer_config_of(module: torch.nn.Module):
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "calculate_per_token_loss"):
            return config
    raise ValueError(f"no TransformerConfig found in {type(module).__name__}")


def wrap_data_parallel(module: torch.nn.Module, pgc, ddp_config=None):
    """The data-parallel wrapper of one module part, or None when nothing in it trains.

    ``ddp_config`` is megatron-core's ``DistributedDataParallelConfig``; its
    ``use_distributed_optimizer`` selects sharding on CPU too.
    """
    if not trainable_parameters(module):
        return None
    if module_device(module).type == "cuda":
        return _megatron_ddp(module, pgc, ddp_config)
    shard = bool(getattr(ddp_config, "use_distributed_optimizer", False))
    return PortableDataParallel(module, pgc.dp_cp, shard)


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
