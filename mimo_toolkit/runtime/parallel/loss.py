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
    """One full-vocabulary fp32 buffer: the logits (converted once, or the fp32 logits
    themselves) become the shifted logits, their exponentials, then the softmax saved for the
    backward, which turns it into the gradient in place (megatron-core's scheme)."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, group):
        # logits [..., V_local] (fp32 after .float(): the caller's tensor when already fp32), target [...] global ids
        work = logits.float()
        local_v = work.shape[-1]
        valid = vocab_size - vocab_start  # columns past it are vocabulary padding
        if valid < local_v:
            work[..., max(valid, 0) :] = float("-inf")
        logits_max = work.amax(dim=-1)
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        work.sub_(logits_max.unsqueeze(-1))
        in_range = (target >= vocab_start) & (target < vocab_start + local_v)
        local_target = (target - vocab_start).clamp(0, local_v - 1)
        # masked_fill, not "* in_range": on a rank whose slice is all padding the gathered
        # logit is -inf, and -inf * 0 is nan (the loss of TP4 with a 320-id vocabulary).
        predicted = work.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(~in_range, 0.0)
        work.exp_()
        stats = torch.stack([predicted, work.sum(dim=-1)])
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        predicted, sum_exp = stats[0], stats[1]
        work.div_(sum_exp.unsqueeze(-1))  # the softmax
        ctx.save_for_backward(work, in_range, local_target)
        return sum_exp.log() - predicted

    @staticmethod
    def backward(ctx, grad_loss):
        grad, in_range, local_target = ctx.saved_tensors
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -in_range.to(grad.dtype).unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, vocab_size: int, tp_group: dist.ProcessGroup
) -> torch.Tensor:
    """Per-token loss ``[...]`` from logits ``[..., V_padded / tp]`` sharded over ``tp_group``.

    fp32 logits are overwritten (they become the softmax, as in megatron-core); other dtypes
    are converted to one fp32 copy. The gradient comes back in the logits' dtype."""
    local_v = logits.shape[-1]
    vocab_start = tp_group.rank() * local_v
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, vocab_size, tp_group)
