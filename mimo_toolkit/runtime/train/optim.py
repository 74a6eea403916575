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
from ..parallel.data_parallel import Segment


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine/linear decay to ``min_lr`` at ``train.lr_decay_steps``
    (default ``train.steps``)."""
    if train.lr_warmup_steps and step < train.lr_warmup_steps:
        return train.lr * (step + 1) / train.lr_warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    end = train.lr_decay_steps if train.lr_decay_steps is not None else train.steps
    span = max(end - train.lr_warmup_steps, 1)
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


def _adam_state(master: torch.Tensor, fused: bool) -> dict:
    """AdamW's per-tensor state, created up front (torch creates the same lazily at the first
    step) so that a checkpoint of step 0 has it and a resumed run can load into it."""
    step = torch.zeros((), dtype=torch.float32, device=master.device if fused else "cpu")
    return {"step": step, "exp_avg": torch.zeros_like(master), "exp_avg_sq": torch.zeros_like(master)}


class ModuleOptimizer:
    """AdamW over the parameter pieces of one module that this rank updates.

    The pieces (``data_parallel.Segment``) are whole parameters, or, with a distributed
    optimizer, this rank's slice of the module's flat buffer cut at parameter boundaries.
    Each piece gets an fp32 master (the parameter storage itself when that is fp32) and its
    Adam moments; AdamW is elementwise, so the sharded update is the unsharded one, sliced.
    """

    def __init__(self, name: str, wrapper, train: TrainConfig, counts_in_norm, counted_here: bool) -> None:
        self.name = name
        self.wrapper = wrapper
        self.segments = [s for s in wrapper.segments() if s.end > s.start]
        self.counts = [counts_in_norm(s.param) for s in self.segments]
        self.counted_here = counted_here
        """Whether this rank's gradients count in the global norm (one replica, or every shard)."""
        self.masters = [
            s.value if s.value.dtype == torch.float32 else s.value.detach().float().clone() for s in self.segments
        ]
        # Tensor lists for the multi-tensor (``torch._foreach_*``) kernels: a few launches per
        # step instead of several per parameter, which on a GPU left it idle for ~20 ms of
        # launches after each step's synchronisation (scripts/bench_runtime_overhead.py --gpu).
        self.grads = [s.grad for s in self.segments]
        self.norm_grads = [s.grad for s, c in zip(self.segments, self.counts) if c]
        self.copies = ([s.value for s, m in zip(self.segments, self.masters) if m is not s.value],
                       [m for s, m in zip(self.segments, self.masters) if m is not s.value])
        decay = [m for m, s in zip(self.masters, self.segments) if s.param.ndim >= 2]
        no_decay = [m for m, s in zip(self.masters, self.segments) if s.param.ndim < 2]
        groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # torch's fused kernel on GPUs and CPUs alike: on CPU it is 2-3x faster than the
        # default per-tensor loop (the heterogeneous encoder's optimizer sits on the step's
        # critical path, issue #13) and allocates no tensor-sized temporaries.
        fused = bool(self.masters)
        self.optimizer = None  # a shard of nothing but padding updates nothing
        if self.masters:
            self.optimizer = torch.optim.AdamW(
                [g for g in groups if g["params"]],
                lr=train.lr,
                betas=(train.adam_beta1, train.adam_beta2),
                eps=train.adam_eps,
                fused=fused,
            )
            for m in self.masters:
                self.optimizer.state[m] = _adam_state(m, fused)
        self.schedule = LRSchedule(train)
        self.updates = 0
        """Steps taken (skipped ones not counted): Adam's step count, the same on every rank."""

    def state_bytes(self) -> int:
        """Bytes of optimizer state on this rank: fp32 masters (when separate) and moments."""
        moments = sum(t.numel() * t.element_size() for m in self.masters for t in self.moments(m).values())
        copies = sum(m.numel() * m.element_size() for m, s in zip(self.masters, self.segments) if m is not s.value)
        return moments + copies

    def moments(self, master: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.optimizer.state[master]
        return {"exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}

    def grad_sq(self) -> torch.Tensor:
        """Sum of squared gradients this rank contributes to the global norm."""
        device = self.masters[0].device if self.masters else "cpu"
        if not (self.counted_here and self.norm_grads):
            return torch.zeros((), dtype=torch.float64, device=device)
        norms = torch._foreach_norm(self.norm_grads, 2, dtype=torch.float32)  # one multi-tensor kernel
        return torch.stack(norms).double().pow(2).sum()

    def step(self, clip_coef: float) -> float:
        lr = self.schedule.lr()
        if clip_coef != 1.0 and self.grads:
            torch._foreach_mul_(self.grads, clip_coef)  # the buffer is zeroed before the next step anyway
        for s, m in zip(self.segments, self.masters):
            m.grad = s.grad
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        for m in self.masters:
            m.grad = None
        if self.copies[0]:
            with torch.no_grad():
                torch._foreach_copy_(*self.copies)  # fp32 masters into the bf16 parameters
        self.wrapper.finish_param_sync()
        self.schedule.step += 1
        self.updates += 1
        return lr

    def skip(self) -> None:
        """Inf/nan somewhere: no update, but the schedule advances like the step did."""
        self.schedule.step += 1

    # ---- checkpoint state (``runtime.train.checkpoint``) ---------------------------------------
    def pieces(self) -> list[tuple[Segment, dict[str, torch.Tensor]]]:
        """Each segment with flat views of its master weights and Adam moments."""
        out = []
        for s, m in zip(self.segments, self.masters):
            tensors = {"master": m, **self.moments(m)}
            out.append((s, {k: v.view(-1) for k, v in tensors.items()}))
        return out

    def counters(self) -> dict:
        return {"adam_step": self.updates, "schedule": self.schedule.state_dict()}

    def load_counters(self, state: dict) -> None:
        self.updates = int(state["adam_step"])
        for m in self.masters:
            self.optimizer.state[m]["step"].fill_(float(self.updates))
        self.schedule.load_state_dict(state["schedule"])


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
    loss_sum: float,
    loss_tokens: int,
    stop: bool,
    bridge_bytes: tuple[int, int],
    device: torch.device,
) -> Consensus:
    """One all-reduce (SUM over the world) of [loss, tokens, stop, bridge bytes sent forward
    and backward, grad_sq per module].

    Each gradient element is counted once: by one data-parallel replica, or, with a
    distributed optimizer, by the replica that holds its shard (``ModuleOptimizer.grad_sq``);
    loss sums come from TP rank 0 of the last LLM stage.
    """
    head = [loss_sum, loss_tokens, float(stop), *bridge_bytes]
    zero = torch.zeros((), dtype=torch.float64, device=device)
    squares = [optimizers[name].grad_sq().to(device) if name in optimizers else zero for name in module_names]
    vec = torch.cat([torch.tensor(head, dtype=torch.float64).to(device), torch.stack(squares)])
    dist.all_reduce(vec)
    values = vec.tolist()  # the one host synchronisation of the consensus
    squares = values[len(head):]
    total = sum(squares)
    return Consensus(
        grad_norm=math.sqrt(total) if math.isfinite(total) else float("nan"),
        module_grad_norms={n: math.sqrt(s) if math.isfinite(s) else float("nan") for n, s in zip(module_names, squares)},
        finite=math.isfinite(total),
        loss=values[0] / max(values[1], 1.0),
        loss_tokens=int(values[1]),
        stop=values[2] > 0,
        bridge_bytes={"forward": int(values[3]), "backward": int(values[4])},
    )


def clip_coefficient(grad_norm: float, clip: float) -> float:
    if clip <= 0 or grad_norm <= clip:
        return 1.0
    return clip / (grad_norm + 1e-6)
