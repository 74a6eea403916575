"""Full (TP1) megatron-core tensors -> Hugging Face tensors: the inverse of each import rule.

Used by the export (a merged checkpoint's state dicts) and by the parity tests (gradients,
which map exactly like the weights they belong to: every rule is a permutation, a split or
a cut).
"""

from __future__ import annotations

import torch

from ...hf.mapping import Rule, te_name


def _value(state: dict[str, torch.Tensor], target: str) -> torch.Tensor:
    if target in state:
        return state[target]
    alias = te_name(target)
    if alias and alias in state:
        return state[alias]
    raise KeyError(f"no {target!r} among the module's tensors")


def split_rule(rule: Rule, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Hugging Face tensors that ``value`` (the full tensor of ``rule.target``) packs."""
    if rule.kind == "qkv":
        per_group = [shape[0] // rule.groups for shape in rule.shapes]
        grouped = value.reshape(rule.groups, sum(per_group), *value.shape[1:])
        parts = torch.split(grouped, per_group, dim=1)
        return {name: part.reshape(shape) for name, part, shape in zip(rule.sources, parts, rule.shapes) if name}
    if rule.kind == "glu":
        gate, up = value.chunk(2, dim=0)
        return {rule.sources[0]: gate, rule.sources[1]: up}
    if rule.kind == "vocab":
        return {rule.sources[0]: value[: rule.shapes[0][0]]}
    return {rule.sources[0]: value.reshape(rule.shapes[0])}


def to_hf(rules: list[Rule], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face tensors of a module from its full state dict (canonical names).

    A tied output layer (its source is the embedding) is written once, from the embedding.
    """
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        if all(name in out for name in rule.sources):  # tied output layer: the embedding was written
            continue
        for name, tensor in split_rule(rule, _value(state, rule.target)).items():
            if name not in out:
                out[name] = tensor.contiguous()
    return out
