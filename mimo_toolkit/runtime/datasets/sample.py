"""A training example and the dataset interface every source implements.

A dataset is anything with ``__len__`` and ``get(index, modalities) -> Sample``. Placeholder
tokens (one per encoder output embedding) are part of ``input_ids``; their loss mask is 0,
as is padding's. The special ids below are those of the built-in byte tokenizer and the
synthetic data.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

import torch

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


@dataclass
class Sample:
    """One training example: text with placeholders, targets, and media per encoder module."""

    input_ids: list[int]
    labels: list[int]
    """Target of each position (the next token); ignored where ``loss_mask`` is 0."""
    loss_mask: list[int]
    media: dict[str, torch.Tensor] = field(default_factory=dict)
    """Encoder module name -> items ``[n_items, ...]`` (images or log-mel clips)."""
    sample_id: str = ""
    undecodable: bool = False
    """Its media passed the header check but failed to decode (zeros stand in for them):
    the sample is dropped from the loss on every rank (``datasets/undecodable.py``)."""


class MimoDataset(Protocol):
    def __len__(self) -> int: ...

    def get(self, index: int, modalities: Collection[str]) -> Sample:
        """Sample ``index`` with media for the named encoder modules only."""


def make_sample(prompt: list[int], answer: list[int], prompt_len: int, media: dict, sample_id: str = "") -> Sample:
    """Input ``prompt + answer``, loss on predicting every answer token."""
    ids = prompt + answer
    labels = ids[1:] + [PAD_ID]
    mask = [1 if prompt_len - 1 <= i < len(ids) - 1 else 0 for i in range(len(ids))]
    return Sample(input_ids=ids, labels=labels, loss_mask=mask, media=media, sample_id=sample_id)
