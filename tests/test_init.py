"""Shard-by-shard initialisation: every layout sees the same full weights, each rank draws its part."""

from __future__ import annotations

import itertools

import pytest
import torch

from mimo_toolkit.runtime.model.init import BLOCK, draw_rows, shard, shard_ranges


def _seed(b: int) -> int:
    return 1000 + b


@pytest.mark.parametrize("dim,stride,world", list(itertools.product((0, 1), (1, 2), (1, 2, 4, 8))))
def test_each_rank_draws_exactly_its_shard_of_the_full_tensor(dim, stride, world):
    """A TP rank's draw equals megatron-core's slice of the full tensor (partition dim,
    stride), vocabulary padding included, so TP1 and TP8 start from the same weights."""
    shape = [8 * 2 * 40, 24] if dim == 0 else [24, 8 * 2 * 40]
    logical = shape[dim] - 37  # the rows past the true vocabulary are zero
    full = draw_rows(shape, dim, logical, [range(shape[dim])], _seed)
    assert full.shape == torch.Size(shape)
    assert torch.count_nonzero(full.narrow(dim, logical, shape[dim] - logical)) == 0
    assert torch.count_nonzero(full.narrow(dim, 0, logical)) == full.narrow(dim, 0, logical).numel()
    for rank in range(world):
        mine = draw_rows(shape, dim, logical, shard_ranges(shape[dim], stride, rank, world), _seed)
        assert torch.equal(mine, shard(full, dim, stride, rank, world)), (rank, world)


def test_blocks_are_independent_of_what_else_is_drawn():
    """Block b's numbers depend on its seed only: drawing a late block alone gives the same
    numbers as drawing everything (what makes per-shard drawing possible)."""
    shape = [5 * BLOCK, 3]
    full = draw_rows(shape, 0, shape[0], [range(shape[0])], _seed)
    tail = draw_rows(shape, 0, shape[0], [range(3 * BLOCK + 5, 4 * BLOCK + 9)], _seed)
    assert torch.equal(tail, full[3 * BLOCK + 5 : 4 * BLOCK + 9])
    other = draw_rows(shape, 0, shape[0], [range(shape[0])], lambda b: 7 + b)
    assert not torch.equal(full, other)
