"""Layout-independent weight initialisation, drawn shard by shard.

megatron-core initialises weights from the global RNG in construction order, so a model
built with PP=2 (each stage builds only its layers) or with modules on other ranks starts
from different numbers than the same model with PP=1. Here every parameter's FULL tensor is
defined independently of the layout, and each rank draws only the part it holds:

* the tensor is cut along its tensor-parallel partition dim (dim 0 for parameters megatron-
  core does not split) into blocks of :data:`BLOCK` indices;
* block ``b`` is ``normal(0, 1)`` from its own generator, seeded by ``(seed, module,
  canonical name, b)``;
* a rank draws the blocks that overlap its tensor-parallel shard (megatron-core's CPU split:
  ``partition_dim``, ``partition_stride``) and keeps the overlap, so a TP rank of a 1B model
  draws about 1/tp of it instead of all of it (``scripts/bench_speed.py init``).

The canonical name uses global layer numbers, so stage 2 of PP=2 gets the same weights layer
3 has under PP=1.

Rules (megatron-core's defaults): biases 0; normalisation weights 1; everything else
normal(0, std), with std / sqrt(2 * num_layers) for the two output projections of each
transformer layer (attention ``linear_proj`` and MLP ``linear_fc2``). Vocabulary-sized
tensors are drawn for the true vocabulary; padding rows are 0.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer

_NORM_TYPES: tuple[type, ...] = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)
_VOCAB_PARAMS = ("embedding.word_embeddings.weight", "output_layer.weight")
_SCALED = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
#: Indices along the partition dim per independently seeded block (a fixed part of the
#: definition of every weight: changing it changes every initial weight).
BLOCK = 64


def _is_norm(module: torch.nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    name = type(module).__name__
    return name.endswith(("LayerNorm", "RMSNorm")) or name in {"TENorm", "WrappedTorchNorm"}


def param_seed(seed: int, module_name: str, canonical: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}/{module_name}/{canonical}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def state_tensors(module: torch.nn.Module):
    """``(local name, tensor)`` of what a checkpoint holds: every parameter and every persistent
    floating-point buffer (e.g. the audio encoder's position table, which a Whisper import fills)."""
    yield from module.named_parameters()
    for name, buf in module.named_buffers():
        owner, _, leaf = name.rpartition(".")
        if buf.is_floating_point() and leaf not in module.get_submodule(owner)._non_persistent_buffers_set:
            yield name, buf


def canonical_names(module: torch.nn.Module) -> dict[str, str]:
    """Local parameter (and persistent buffer) name -> name with global (PP-independent) layer numbers."""
    layer_prefix: dict[str, str] = {}
    for name, mod in module.named_modules():
        if isinstance(mod, TransformerLayer):
            layer_prefix[name] = re.sub(r"layers\.\d+$", f"layers.{mod.layer_number - 1}", name)
    out = {}
    for name, _ in state_tensors(module):
        canonical = name
        for local, glob in layer_prefix.items():
            if name.startswith(local + "."):
                canonical = glob + name[len(local) :]
                break
        out[name] = canonical
    return out


def shard(full: torch.Tensor, dim: int, stride: int, rank: int, world: int) -> torch.Tensor:
    """This TP rank's slice of a full tensor (megatron-core's CPU init split)."""
    per_stride = full.shape[dim] // world // stride
    chunks = torch.split(full, per_stride, dim=dim)
    return torch.cat(chunks[rank::world], dim=dim)


def shard_ranges(size: int, stride: int, rank: int, world: int) -> list[range]:
    """The index ranges along the partition dim that :func:`shard` gives ``rank``, in order."""
    per = size // world // stride
    return [range(k * per, (k + 1) * per) for k in range(rank, world * stride, world)]


def draw_rows(shape: list[int], dim: int, logical: int, ranges: list[range], seed_of) -> torch.Tensor:
    """Indices ``ranges`` (along ``dim``) of a tensor of ``shape`` whose first ``logical``
    indices are drawn block by block (``seed_of(b)`` seeds block ``b``) and the rest are 0."""
    parts, blocks = [], {}
    for wanted in ranges:
        for b in range(wanted.start // BLOCK, -(-wanted.stop // BLOCK)):
            lo, hi = max(wanted.start, b * BLOCK), min(wanted.stop, (b + 1) * BLOCK)
            block_shape = list(shape)
            block_shape[dim] = hi - lo
            if b * BLOCK >= logical:
                parts.append(torch.zeros(block_shape))
                continue
            if b not in blocks:
                drawn_shape = list(shape)
                drawn_shape[dim] = min((b + 1) * BLOCK, logical) - b * BLOCK
                blocks[b] = torch.randn(drawn_shape, generator=torch.Generator().manual_seed(seed_of(b)))
            drawn = blocks[b].narrow(dim, lo - b * BLOCK, max(0, min(hi, logical) - lo))
            parts.append(drawn)
            if hi > logical:  # the block that crosses the end of the true vocabulary
                block_shape[dim] = hi - max(lo, logical)
                parts.append(torch.zeros(block_shape))
    return torch.cat(parts, dim=dim)


@torch.no_grad()
def init_module(
    module: torch.nn.Module,
    *,
    seed: int,
    module_name: str,
    std: float,
    num_layers: int,
    tp_rank: int,
    tp_size: int,
    vocab_size: int | None = None,
    skip: Collection[str] = (),
) -> None:
    """Initialise every parameter of ``module`` (one module's stage on this rank) in place,
    except those named in ``skip`` (pretrained weights fill them)."""
    names = canonical_names(module)
    owners = {}
    for mod_name, mod in module.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{pname}" if mod_name else pname] = mod
    for name, param in module.named_parameters():
        if name in skip:
            continue
        leaf = name.rsplit(".", 1)[-1]
        owner = owners[name]
        if leaf == "bias" or leaf.endswith("_bias"):
            param.zero_()
            continue
        if _is_norm(owner) or leaf == "layer_norm_weight":
            param.fill_(1.0)
            continue
        canonical = names[name]
        partitioned = bool(getattr(param, "tensor_model_parallel", False))
        dim = getattr(param, "partition_dim", 0) if partitioned else 0
        full_shape = list(param.shape)
        if partitioned and tp_size > 1:
            full_shape[dim] *= tp_size
            ranges = shard_ranges(full_shape[dim], getattr(param, "partition_stride", 1), tp_rank, tp_size)
        else:
            ranges = [range(full_shape[dim])]
        is_vocab = vocab_size is not None and canonical.endswith(_VOCAB_PARAMS)
        logical = vocab_size if is_vocab else full_shape[dim]
        sigma = std / math.sqrt(2.0 * num_layers) if canonical.endswith(_SCALED) else std
        mine = draw_rows(full_shape, dim, logical, ranges, lambda b: param_seed(seed, module_name, canonical, b))
        param.copy_((mine * sigma).to(dtype=param.dtype, device=param.device))
