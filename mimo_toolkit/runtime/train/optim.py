"""Per-module optimizers and LR schedules, and the cross-module consensus of a step.

Each module this rank holds gets its own AdamW and LR schedule (their states are saved per
module). The decisions that must be global are taken together, from ONE small all-reduce
over the world per step (:func:`step_consensus`): the gradient norm over all modules (for
clipping), whether any gradient is inf/nan (then every rank skips the step), the step's loss,
and whether any rank was asked to stop (preemption).

Why not megatron-core's optimizer: its grad-norm and found-inf logic runs per model over the
model's own groups; MIMO needs one norm and one skip decision across modules that live on
different ranks. The update itself is the same: fp32 master weights when the model computes
in bf16, gradients read from the data-parallel wrappers' fp32 ``main_grad`` buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...config import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine/linear decay to ``min_lr`` at ``train.steps``."""
    if train.lr_warmup_steps and step < train.lr_warmup_steps:
        return train.lr * (step + 1) / train.lr_warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    span = max(train.steps - train.lr_warmup_steps, 1)
    progress = min(max(step - train.lr_warmup_steps, 0) / span, 1.0)
    if train.lr_schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.min_lr + (train.lr - train.min_lr) * factor


class LRSchedule:
    """The LR schedule of one module (stateful only in its step counter)."""

    def __init__(self, train: TrainConfig) -> None:
        self.train = train
        self.step = 0

    def lr(self) -> float:
        return lr_at(self.step, self.train)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def counts_for_norm(param: torch.Tensor, tp_rank: int, pp_rank: int) -> bool:
    """Whether this rank's copy of ``param`` counts in the global norm (no TP duplicates,
    no second copy of a tied embedding)."""
    if getattr(param, "shared_embedding", False) and pp_rank > 0:
        return False
    return bool(getattr(param, "tensor_model_parallel", False)) or tp_rank == 0


class ModuleOptimizer:
    """AdamW over one module's trainable parameters on this rank."""

    def __init__(self, name: str, params: list[torch.nn.Parameter], train: TrainConfig, counts_in_norm: list[bool]) -> None:
        self.name = name
        self.params = params
        self.counts_in_norm = counts_in_norm
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in params]
        decay = [m for m, p in zip(self.masters, params) if p.ndim >= 2]
        no_decay = [m for m, p in zip(self.masters, params) if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = bool(params) and params[0].is_cuda
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=train.lr,
            betas=(train.adam_beta1, train.adam_beta2),
            eps=train.adam_eps,
            fused=fused or None,
        )
        self.schedule = LRSchedule(train)

    def grad_sq(self) -> torch.Tensor:
        """Sum of squared gradients this rank contributes to the global norm."""
        total = torch.zeros((), dtype=torch.float32, device=self.params[0].device if self.params else "cpu")
        for p, counts in zip(self.params, self.counts_in_norm):
            if counts:
                total += p.main_grad.float().pow(2).sum()
        return total

    def step(self, clip_coef: float) -> float:
        lr = self.schedule.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for p, m in zip(self.params, self.masters):
            if clip_coef != 1.0:
                p.main_grad.mul_(clip_coef)  # the buffer is zeroed before the next step anyway
            m.grad = p.main_grad
        self.optimizer.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                m.grad = None
                if m is not p:
                    p.copy_(m)
        self.schedule.step += 1
        return lr

    def skip(self) -> None:
        """Inf/nan somewhere: no update, but the schedule advances like the step did."""
        self.schedule.step += 1

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}
        if any(m is not p for m, p in zip(self.masters, self.params)):
            state["masters"] = [m.detach().cpu() for m in self.masters]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if "masters" in state:
            with torch.no_grad():
                for m, saved in zip(self.masters, state["masters"]):
                    m.copy_(saved)


@dataclass
class Consensus:
    grad_norm: float
    module_grad_norms: dict[str, float]
    finite: bool
    loss: float
    loss_tokens: int
    stop: bool
    bridge_bytes: dict[str, int]


def step_consensus(
    optimizers: dict[str, ModuleOptimizer],
    module_names: list[str],
    counted: dict[str, bool],
    loss_sum: float,
    loss_tokens: int,
    stop: bool,
    bridge_bytes: tuple[int, int],
    device: torch.device,
) -> Consensus:
    """One all-reduce (SUM over the world) of [loss, tokens, stop, bridge bytes sent forward
    and backward, grad_sq per module].

    ``counted[m]`` is True on exactly one data-parallel replica of module ``m`` (so each
    gradient shard is counted once); loss sums come from TP rank 0 of the last LLM stage.
    """
    head = 5
    vec = torch.zeros(head + len(module_names), dtype=torch.float64, device=device)
    vec[0], vec[1], vec[2], vec[3], vec[4] = loss_sum, loss_tokens, float(stop), *bridge_bytes
    for i, name in enumerate(module_names):
        if name in optimizers and counted.get(name, False):
            vec[head + i] = optimizers[name].grad_sq().double()
    dist.all_reduce(vec)
    squares = vec[head:].tolist()
    total = sum(squares)
    return Consensus(
        grad_norm=math.sqrt(total) if math.isfinite(total) else float("nan"),
        module_grad_norms={n: math.sqrt(s) if math.isfinite(s) else float("nan") for n, s in zip(module_names, squares)},
        finite=math.isfinite(total),
        loss=vec[0].item() / max(vec[1].item(), 1.0),
        loss_tokens=int(vec[1].item()),
        stop=vec[2].item() > 0,
        bridge_bytes={"forward": int(vec[3].item()), "backward": int(vec[4].item())},
    )


def clip_coefficient(grad_norm: float, clip: float) -> float:
    if clip <= 0 or grad_norm <= clip:
        return 1.0
    return clip / (grad_norm + 1e-6)
