"""The vocabulary-parallel cross-entropy against torch's, on one rank (the TP split is covered
by the layout-equivalence tests)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mimo_toolkit.runtime.parallel.loss import vocab_parallel_cross_entropy


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg')}/store", rank=0, world_size=1)
    yield dist.new_group([0])
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_match_torch(group, dtype):
    """Per-token losses and logit gradients equal torch's cross-entropy over the true
    vocabulary (the 14 padding columns get no probability and no gradient)."""
    torch.manual_seed(0)
    vocab, pad = 50, 14
    logits = torch.randn(7, 3, vocab + pad).to(dtype)
    target = torch.randint(0, vocab, (7, 3))
    weight = torch.rand(7, 3)
    ours = logits.clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(ours, target, vocab, group)
    (loss * weight).sum().backward()
    ref_logits = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(ref_logits[..., :vocab].reshape(-1, vocab), target.reshape(-1),
                                            reduction="none").view(7, 3)
    (ref * weight).sum().backward()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert ours.grad.dtype == dtype
    assert (loss.double() - ref).abs().max() < 1e-5
    assert (ours.grad.double() - ref_logits.grad).abs().max() < tol
    assert torch.count_nonzero(ours.grad[..., vocab:]) == 0
