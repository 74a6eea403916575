"""Pretrained Hugging Face weights into this rank's part of a module, slice by slice.

Called by the provider's ``initialize_weights`` for every module with
``model.<module>.pretrained``. Each parameter this rank holds is matched to its rule in
:mod:`mimo_toolkit.hf.mapping` by its canonical name (global layer numbers, so a pipeline
stage finds its own layers), and ONLY the rows or columns of its tensor-parallel shard are
read from the safetensors files (``safe_open(...).get_slice``): a rank never holds a full
copy of a sharded tensor, and peak memory grows by about the shard itself.

The slice of a parameter follows from megatron-core's own attributes on it
(``tensor_model_parallel``, ``partition_dim``): column-parallel weights (``linear_qkv``,
``linear_fc1``, embeddings, output layer, projector ``linear_fc1``) take rows, row-parallel
ones (``linear_proj``, ``linear_fc2``) columns; everything else is replicated.
"""

from __future__ import annotations

import torch

from ...hf.mapping import Rule, te_name
from ...hf.pretrained import ModuleImport
from .init import canonical_names


class SliceReader:
    """Row/column ranges of the checkpoint's tensors, read through safetensors' lazy slices."""

    def __init__(self, imp: ModuleImport) -> None:
        self.tensors = imp.source.checkpoint.tensors
        self._files: dict = {}

    def __enter__(self) -> "SliceReader":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._files.values():
            handle.__exit__(None, None, None)
        self._files.clear()

    def _slice(self, name: str):
        from safetensors import safe_open

        path = self.tensors[name].file
        if path not in self._files:
            self._files[path] = safe_open(str(path), framework="pt", device="cpu").__enter__()
        return self._files[path].get_slice(name)

    def full(self, name: str) -> torch.Tensor:
        return self._slice(name)[:]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._slice(name)[start:stop]

    def cols(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._slice(name)[:, start:stop]


def _shard_range(size: int, rank: int, world: int) -> tuple[int, int]:
    per = size // world
    return rank * per, (rank + 1) * per


def read_shard(reader: SliceReader, rule: Rule, param: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's part of ``rule``'s full tensor, shaped like ``param``."""
    sharded = bool(getattr(param, "tensor_model_parallel", False)) and tp_size > 1
    rank, world = (tp_rank, tp_size) if sharded else (0, 1)
    if rule.kind == "qkv":
        return _qkv(reader, rule, rank, world)
    if rule.kind == "glu":
        return torch.cat([reader.rows(n, *_shard_range(s[0], rank, world)) for n, s in zip(rule.sources, rule.shapes)])
    if rule.kind == "vocab":
        return _vocab_rows(reader, rule, param.shape[0], rank)
    if rule.kind == "class_token":
        return reader.full(rule.sources[0]).view(1, 1, -1)
    name, shape = rule.sources[0], rule.shapes[0]
    if not sharded:
        return reader.full(name)
    dim = getattr(param, "partition_dim", 0)
    start, stop = _shard_range(shape[dim], rank, world)
    return reader.rows(name, start, stop) if dim == 0 else reader.cols(name, start, stop)


def _qkv(reader: SliceReader, rule: Rule, rank: int, world: int) -> torch.Tensor:
    """Whole query groups ``[g0, g1)``: per group its query heads, key head, value head."""
    groups = rule.groups
    g0, g1 = _shard_range(groups, rank, world)
    parts = []
    for name, shape in zip(rule.sources, rule.shapes):
        per_group = shape[0] // groups
        if name is None:  # Whisper's absent key bias
            parts.append(torch.zeros((g1 - g0) * per_group, *shape[1:]))
        else:
            parts.append(reader.rows(name, g0 * per_group, g1 * per_group))
    trailing = parts[0].shape[1:]
    grouped = [p.reshape(g1 - g0, -1, *trailing) for p in parts]
    return torch.cat([g.to(grouped[0].dtype) for g in grouped], dim=1).reshape(-1, *trailing)


def _vocab_rows(reader: SliceReader, rule: Rule, local_rows: int, rank: int) -> torch.Tensor:
    """Rows ``[rank * local_rows, ...)`` of the vocabulary padded with zero rows."""
    vocab = rule.shapes[0][0]
    start = rank * local_rows
    stop = min(start + local_rows, vocab)
    real = reader.rows(rule.sources[0], start, stop) if stop > start else None
    pad_rows = local_rows - max(stop - start, 0)
    if real is None:
        return torch.zeros(local_rows, rule.shapes[0][1])
    return torch.cat([real, real.new_zeros(pad_rows, *real.shape[1:])]) if pad_rows else real


def rules_by_target(rules: list[Rule]) -> dict[str, Rule]:
    """Rules keyed by the local-spec name and by the transformer-engine spec's name."""
    out = {}
    for rule in rules:
        out[rule.target] = rule
        alias = te_name(rule.target)
        if alias:
            out[alias] = rule
    return out


@torch.no_grad()
def load_pretrained(part: torch.nn.Module, imp: ModuleImport, tp_rank: int, tp_size: int) -> set[str]:
    """Fill every parameter (and buffer) of ``part`` that ``imp``'s rules cover; returns their local names."""
    by_target = rules_by_target(imp.rules)
    canonical = canonical_names(part)
    tensors = dict(part.named_parameters())
    tensors.update((name, buf) for name, buf in part.named_buffers() if name.rsplit(".", 1)[-1] in ("positions",))
    filled = set()
    with SliceReader(imp) as reader:
        for name, tensor in tensors.items():
            rule = by_target.get(canonical.get(name, name))
            if rule is None:
                continue
            value = read_shard(reader, rule, tensor, tp_rank, tp_size)
            if value.shape != tensor.shape:
                raise ValueError(
                    f"{imp.source.checkpoint.path}: {rule.sources} -> {name}: read {tuple(value.shape)}, "
                    f"the parameter is {tuple(tensor.shape)} (tp {tp_rank}/{tp_size})"
                )
            tensor.copy_(value.to(tensor.dtype))
            filled.add(name)
    return filled


def covered(part: torch.nn.Module, imp: ModuleImport) -> set[str]:
    """Local names of ``part``'s parameters the checkpoint fills (nothing is read)."""
    by_target = rules_by_target(imp.rules)
    canonical = canonical_names(part)
    return {name for name, _ in part.named_parameters() if canonical[name] in by_target}
