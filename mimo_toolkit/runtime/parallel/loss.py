"""Cross-entropy over vocabulary-parallel logits, on the language module's OWN TP group.

megatron-core 0.16.1's ``vocab_parallel_cross_entropy`` reads the global parallel_state TP
group, which MIMO never sets (each module has its own). Padding rows of the vocabulary
(added so every TP rank holds an equal slice) are masked out, so the loss does not depend
on how much padding a TP size needs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, group):
        # logits [..., V_local] (fp32), target [...] global ids
        local_v = logits.shape[-1]
        ids = torch.arange(vocab_start, vocab_start + local_v, device=logits.device)
        logits = logits.masked_fill(ids >= vocab_size, float("-inf"))
        logits_max = logits.max(dim=-1).values
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - logits_max.unsqueeze(-1)
        in_range = (target >= vocab_start) & (target < vocab_start + local_v)
        local_target = (target - vocab_start).clamp(0, local_v - 1)
        # masked_fill, not "* in_range": on a rank whose slice is all padding the gathered
        # logit is -inf, and -inf * 0 is nan (the loss of TP4 with a 320-id vocabulary).
        predicted = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(~in_range, 0.0)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        stats = torch.stack([predicted, sum_exp])
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        predicted, sum_exp = stats[0], stats[1]
        loss = sum_exp.log() - predicted
        softmax = exp / sum_exp.unsqueeze(-1)
        ctx.save_for_backward(softmax, in_range, local_target)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, in_range, local_target = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -in_range.to(grad.dtype).unsqueeze(-1))
        return grad * grad_loss.unsqueeze(-1), None, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, vocab_size: int, tp_group: dist.ProcessGroup
) -> torch.Tensor:
    """Per-token loss ``[...]`` from logits ``[..., V_padded / tp]`` sharded over ``tp_group``."""
    local_v = logits.shape[-1]
    vocab_start = tp_group.rank() * local_v
    return _VocabParallelCrossEntropy.apply(logits.float(), target, vocab_start, vocab_size, tp_group)
