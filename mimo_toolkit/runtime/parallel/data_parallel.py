"""Per-module data parallelism: fp32 ``main_grad`` buffers summed over the module's dp x cp group.

Two implementations with one interface (``zero_grad_buffer()``, ``finish_grad_sync()``, and
``param.main_grad`` on every trainable parameter):

* CUDA: megatron-core's ``DistributedDataParallel`` with the module's own ProcessGroupCollection.
* CPU (gloo): :class:`PortableDataParallel`. megatron-core's DDP allocates its buffers on CUDA,
  so here each trainable parameter's gradient is accumulated (in fp32) into a view of one flat
  buffer by a post-accumulate-grad hook, and ``finish_grad_sync`` all-reduces that buffer once.

Both SUM across replicas: the loss is already normalised by the number of loss tokens of the
whole global batch, so the summed gradient is the gradient of the global mean loss whatever
the data-parallel sizes of the modules are.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class PortableDataParallel:
    """fp32 gradient buffers and their all-reduce over gloo (or any backend)."""

    def __init__(self, module: torch.nn.Module, dp_group: dist.ProcessGroup) -> None:
        self.module = module
        self.dp_group = dp_group
        self.params = trainable_parameters(module)
        device = self.params[0].device
        total = sum(p.numel() for p in self.params)
        self.buffer = torch.zeros(total, dtype=torch.float32, device=device)
        offset = 0
        for p in self.params:
            p.main_grad = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.register_post_accumulate_grad_hook(_accumulate_into_main_grad)

    def zero_grad_buffer(self) -> None:
        self.buffer.zero_()

    def finish_grad_sync(self) -> None:
        if self.dp_group.size() > 1:
            dist.all_reduce(self.buffer, op=dist.ReduceOp.SUM, group=self.dp_group)


def _accumulate_into_main_grad(param: torch.Tensor) -> None:
    param.main_grad.add_(param.grad)
    param.grad = None


def _megatron_ddp(module: torch.nn.Module, pgc, ddp_config):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    config = copy.copy(_transformer_config_of(module))
    config.calculate_per_token_loss = True  # sum over replicas, do not average
    ddp_config = ddp_config or DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False
    )
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=module, pg_collection=pgc)


def _transformer_config_of(module: torch.nn.Module):
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "calculate_per_token_loss"):
            return config
    raise ValueError(f"no TransformerConfig found in {type(module).__name__}")


def wrap_data_parallel(module: torch.nn.Module, pgc, ddp_config=None):
    """The data-parallel wrapper of one module part, or None when nothing in it trains."""
    if not trainable_parameters(module):
        return None
    if module_device(module).type == "cuda":
        return _megatron_ddp(module, pgc, ddp_config)
    return PortableDataParallel(module, pgc.dp_cp)


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
