"""The per-module optimizer's arithmetic against plain torch: the squared gradient norm it
contributes to the consensus, clipping, AdamW on fp32 masters, and the bf16 parameters it
writes back. Its multi-tensor kernels (``torch._foreach_*``) replaced per-parameter loops
after a GPU run showed the loops' launches idling the device; this pins what they compute."""

from __future__ import annotations

import torch

from mimo_toolkit.config import TrainConfig
from mimo_toolkit.runtime.parallel.data_parallel import Segment
from mimo_toolkit.runtime.train.optim import ModuleOptimizer


class _Wrapper:
    def __init__(self, segments):
        self._segments = segments

    def segments(self):
        return self._segments

    def finish_param_sync(self):
        pass


def _segments(dtype):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape).to(dtype)) for shape in ((8, 4), (4,), (3, 5))]
    params[2].tensor_model_parallel = True  # counted on every TP rank, the others on TP rank 0 only
    grads = [torch.randn(p.shape) for p in params]
    return params, [Segment(p, 0, p.numel(), g, p) for p, g in zip(params, grads)], grads


def test_grad_norm_clipping_adamw_and_bf16_write_back_match_torch():
    train = TrainConfig(lr=1e-2, weight_decay=0.1, clip_grad=1.0)
    params, segments, grads = _segments(torch.bfloat16)
    masters_before = [p.detach().float().clone() for p in params]
    grads_before = [g.clone() for g in grads]
    opt = ModuleOptimizer("llm", _Wrapper(segments), train, lambda p: True, counted_here=True)

    expected_sq = sum(float(g.double().pow(2).sum()) for g in grads)
    assert abs(float(opt.grad_sq()) - expected_sq) <= 1e-6 * expected_sq

    coef = 0.25
    reference = [m.clone().requires_grad_(True) for m in masters_before]
    ref_opt = torch.optim.AdamW(
        [{"params": [reference[0], reference[2]], "weight_decay": 0.1}, {"params": [reference[1]], "weight_decay": 0.0}],
        lr=opt.schedule.lr(), betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_eps,
    )
    for r, g in zip(reference, grads):
        r.grad = g * coef
    opt.step(coef)
    ref_opt.step()
    for m, r, p in zip(opt.masters, reference, params):
        torch.testing.assert_close(m, r.detach(), rtol=1e-6, atol=1e-7)
        assert torch.equal(p.detach(), r.detach().to(torch.bfloat16))  # the parameter is the rounded master
    for g, before in zip(grads, grads_before):
        torch.testing.assert_close(g, before * coef)  # clipped in place, in the data-parallel buffer


def test_only_counted_gradients_enter_the_norm():
    train = TrainConfig()
    params, segments, grads = _segments(torch.float32)
    opt = ModuleOptimizer("llm", _Wrapper(segments), train, lambda p: getattr(p, "tensor_model_parallel", False), True)
    assert abs(float(opt.grad_sq()) - float(grads[2].double().pow(2).sum())) < 1e-4
    assert float(ModuleOptimizer("llm", _Wrapper(segments), train, lambda p: True, counted_here=False).grad_sq()) == 0.0
    assert opt.masters[0] is params[0]  # fp32 parameters are their own masters: nothing copied back
