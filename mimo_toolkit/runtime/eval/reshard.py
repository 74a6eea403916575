"""Merge a checkpoint's tensor- and pipeline-parallel shards into one full state dict per module.

A checkpoint holds ``model/<module>/tpXX-ppYY.pt`` per (TP rank, PP stage) of each module
(``mimo_toolkit.runtime.train.checkpoint``). Loading it into a model of another layout (evaluation
runs one process, TP1/PP1, whatever the training layout was) means undoing both splits:

* pipeline stages number their layers from 0; stage ``p``'s layer ``i`` is global layer
  ``i + (layers of the stages before p)`` (what ``init.canonical_names`` computes for a
  built model);
* a tensor-parallel parameter is put back together along its ``partition_dim``, undoing
  the strided split of ``init.shard`` (SwiGLU's ``linear_fc1`` has stride 2: each rank holds
  a slice of the gate and a slice of the up projection); the target model's parameters
  carry those attributes (megatron-core sets them at any TP size). Everything else is
  replicated over TP ranks and taken from rank 0.
* the vocabulary is padded to a multiple of 128 x TP, so vocabulary-sized tensors are cut
  (or zero-padded) to the target model's padded size; padding rows are never used.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch

from ..model.init import _VOCAB_PARAMS

_SHARD = re.compile(r"tp(\d+)-pp(\d+)\.pt")
_LAYER = re.compile(r"((?:^|\.)layers\.)(\d+)(\.)")


def unshard(parts: list[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """The full tensor whose ``init.shard(full, dim, stride, r, len(parts))`` is ``parts[r]``."""
    world = len(parts)
    pieces = [p.chunk(stride, dim=dim) for p in parts]
    return torch.cat([pieces[c % world][c // world] for c in range(world * stride)], dim=dim)


def read_shards(checkpoint: Path, module: str) -> dict[tuple[int, int], dict]:
    """(tp, pp) -> the module's state dict in that shard file."""
    out = {}
    for path in sorted((checkpoint / "model" / module).glob("tp*-pp*.pt")):
        match = _SHARD.fullmatch(path.name)
        if match:
            state = torch.load(path, map_location="cpu", weights_only=False)
            out[(int(match[1]), int(match[2]))] = state["model"]
    if not out:
        raise FileNotFoundError(f"{checkpoint}: no shards of module {module!r}")
    return out


def _layer_numbers(state: dict) -> set[int]:
    return {int(m[2]) for key in state for m in [_LAYER.search(key)] if m}


def _global_names(state: dict, offset: int) -> dict:
    if not offset:
        return dict(state)
    return {_LAYER.sub(lambda m: f"{m[1]}{int(m[2]) + offset}{m[3]}", key, count=1): v for key, v in state.items()}


def merge_shards(shards: dict[tuple[int, int], dict], target: torch.nn.Module) -> dict:
    """One state dict for ``target`` (the module built TP1/PP1) from all (tp, pp) shards."""
    tp_size = 1 + max(tp for tp, _ in shards)
    pp_size = 1 + max(pp for _, pp in shards)
    by_name: dict[str, list] = defaultdict(lambda: [None] * tp_size)
    offset = 0
    for pp in range(pp_size):
        for tp in range(tp_size):
            for key, value in _global_names(shards[(tp, pp)], offset).items():
                by_name[key][tp] = value
        offset += len(_layer_numbers(shards[(0, pp)]))
    params = dict(target.named_parameters())
    expected = target.state_dict()
    merged = {}
    for key, ref in expected.items():
        if key not in by_name:
            raise KeyError(f"checkpoint has no {key!r} (checked {tp_size} TP x {pp_size} PP shards)")
        parts = by_name[key]
        param = params.get(key)
        if param is not None and getattr(param, "tensor_model_parallel", False) and tp_size > 1:
            value = unshard(parts, param.partition_dim, getattr(param, "partition_stride", 1))
        else:
            value = parts[0]
        if isinstance(ref, torch.Tensor) and value.shape != ref.shape:
            value = _fit_vocab(key, value, ref.shape)
        merged[key] = value
    return merged


def _fit_vocab(key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Vocabulary padding differs between TP sizes: cut or zero-pad dimension 0."""
    if not key.endswith(_VOCAB_PARAMS) or value.shape[1:] != shape[1:]:
        raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} does not fit {tuple(shape)}")
    if value.shape[0] >= shape[0]:
        return value[: shape[0]]
    return torch.cat([value, value.new_zeros(shape[0] - value.shape[0], *shape[1:])])
