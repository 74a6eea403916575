"""One optimizer step's forward and backward passes on this rank, following its schedule.

For each operation of this rank's list (``mimo_toolkit.runtime.train.schedule``):

* ``F(encoder)``: encode this replica's media slice and hand the projected embeddings to the
  bridge; keep them for the backward if the encoder or its projector trains.
* ``F(llm, 0)``: take the encoders' embeddings from the bridge, embed the text
  (``MimoModel.get_text_embeddings``), put the embeddings at the placeholder positions
  (``MimoModel.align_embeddings_by_token_positions``) and run the first LLM stage.
* ``F(llm, s>0)``: receive the previous stage's activations and run this stage.
* The last stage computes the per-token loss over its own TP group, normalised by the number
  of loss tokens of the WHOLE global batch, so gradients sum to those of the global mean.
* ``B(...)``: the reverse, sending activation gradients back along the same paths.

An Engine with no backward modules (validation: the forward-only lists of
``build_schedule(layout, m, backward=set())``) runs under ``torch.no_grad``, on the same
layout, bridge and data path as training.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ...config import JobConfig
from ..datasets.batching import ReplicaData, TextBatch
from ..model.specs import ENCODER_KEY
from ..parallel.loss import vocab_parallel_cross_entropy
from ..parallel.p2p import P2P
from .schedule import Op

#: keyword argument of each encoder kind's forward
ENCODER_INPUT = {"vision": "x", "audio": "input_features"}


def encode(model, job: JobConfig, module: str, items: torch.Tensor) -> torch.Tensor:
    """Projected embeddings ``[items x tokens_per_sample, llm hidden]`` of one encoder module.

    No items (a replica whose samples are all text-only): no embeddings, and no forward, as
    the encoders do not take empty batches."""
    if items.shape[0] == 0:
        return items.new_zeros(0, job.language_model.hidden_size)
    kind = job.model[module].KIND
    return model.modality_submodules[module](encoder_inputs={ENCODER_KEY[kind]: {ENCODER_INPUT[kind]: items}})


def decoder_input(model, job: JobConfig, input_ids: torch.Tensor, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """The LLM's input ``[s, b, h]``: text embeddings, with each encoder's embeddings at its
    placeholder positions (in sample order)."""
    special = job.layout.special_token_ids
    positions = None
    if job.language_model.position_embedding != "rope":
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    text = model.get_text_embeddings(input_ids, positions, special)
    return model.align_embeddings_by_token_positions({**embeddings, "text": text}, input_ids, special)


@dataclass
class StepOutput:
    loss_sum: float = 0.0
    """Sum of per-token losses over this rank's loss tokens (LLM last stage, TP rank 0)."""
    loss_tokens: int = 0
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """'<module>/fwd' and '<module>/bwd' seconds of compute on this rank, and '<module>/wait':
    seconds its operations spent blocked on data from other ranks."""


class Engine:
    def __init__(self, job: JobConfig, model, pgcs: dict, bridge, p2p: P2P, data: ReplicaData,
                 backward_modules: set[str], ops: list[Op], device: torch.device, dtype: torch.dtype) -> None:
        self.job = job
        self.model = model
        self.pgcs = pgcs
        self.bridge = bridge
        self.p2p = p2p
        self.data = data
        self.backward = backward_modules
        self.ops = ops
        self.device = device
        self.dtype = dtype
        self.lm = job.layout.language_module
        self.layout = job.layout
        self.rank = dist.get_rank()
        lm_par = self.layout.language
        self.lm_coords = lm_par.coordinates(self.rank)
        self.hidden = job.language_model.hidden_size

    # ---- the step ---------------------------------------------------------------------------
    def run_step(self, step: int) -> StepOutput:
        self.out = StepOutput()
        self.bridge.stats.forward_bytes = self.bridge.stats.backward_bytes = 0
        self.state: dict = {}
        self.step = step
        self.texts = self._load_texts(step)
        self.loss_scale = self._global_loss_tokens()
        with torch.no_grad() if not self.backward else contextlib.nullcontext():
            self._run_ops()
        self.p2p.wait_sends()
        self.bridge.end_step()
        self.state.clear()
        return self.out

    def _run_ops(self) -> None:
        for op in self.ops:
            start, waited = time.perf_counter(), self.p2p.wait_s
            if op.kind == "F":
                self._forward(op)
            else:
                self._backward(op)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            wait = self.p2p.wait_s - waited
            self.out.times[f"{op.module}/{'fwd' if op.kind == 'F' else 'bwd'}"] += time.perf_counter() - start - wait
            self.out.times[f"{op.module}/wait"] += wait

    def _load_texts(self, step: int) -> list[TextBatch] | None:
        if self.lm_coords is None:
            return None
        return [self.data.text(step, mb) for mb in range(self.data.geometry.num_microbatches)]

    def _global_loss_tokens(self) -> float:
        """Loss tokens in the whole global batch (sum over LLM replicas)."""
        if self.texts is None:
            return 1.0
        local = torch.tensor([float(sum(t.num_loss_tokens for t in self.texts))], device=self.device)
        dist.all_reduce(local, group=self.pgcs[self.lm].dp_cp)
        return max(local.item(), 1.0)

    # ---- forward ---------------------------------------------------------------------------
    def _forward(self, op: Op) -> None:
        if op.module != self.lm:
            self._encoder_forward(op.module, op.microbatch)
        else:
            self._llm_forward(op.stage, op.microbatch)

    def _encoder_forward(self, module: str, mb: int) -> None:
        media = self.data.media(module, self.step, mb)
        embeddings = encode(self.model, self.job, module, media.items.to(self.device, self.dtype))
        self.bridge.send_forward(module, mb, embeddings, media)
        if module in self.backward:
            self.state[(module, mb)] = (embeddings, media)

    def _llm_forward(self, stage: int, mb: int) -> None:
        text = self.texts[mb]
        lm = self.model.language_model
        needs_grad = self.lm in self.backward
        if stage == 0:
            received = {}
            for enc in self.layout.encoder_names:
                emb = self.bridge.recv_forward(enc, mb, text).to(self.dtype)
                received[enc] = emb.detach().requires_grad_(enc in self.backward)
            combined = decoder_input(self.model, self.job, text.input_ids.to(self.device), received)
            output = lm(input_ids=None, position_ids=None, attention_mask=None, decoder_input=combined)
            inputs = received
        else:
            shape = (self.job.train.seq_length, self.job.train.micro_batch_size, self.hidden)
            x = self.p2p.recv(shape, self.dtype, self.device, self._stage_rank(stage - 1), "pipe_fwd", tag=mb)
            x.requires_grad_(needs_grad)
            lm.set_input_tensor(x)
            output = lm(input_ids=None, position_ids=None, attention_mask=None)
            inputs = x
        if stage == self.layout.language.pp - 1:
            output = self._loss(output, text)
        else:
            self.p2p.send(output.detach(), self._stage_rank(stage + 1), "pipe_fwd", tag=mb)
        if needs_grad:
            self.state[(self.lm, mb)] = (inputs, output)

    def _loss(self, logits: torch.Tensor, text: TextBatch) -> torch.Tensor:
        labels = text.labels.to(self.device)
        mask = text.loss_mask.to(self.device)
        per_token = vocab_parallel_cross_entropy(logits, labels, self.job.language_model.vocab_size, self.pgcs[self.lm].tp)
        loss_sum = (per_token * mask).sum()
        if self.lm_coords["tp"] == 0:
            self.out.loss_sum += loss_sum.item()
            self.out.loss_tokens += int(mask.sum().item())
        return loss_sum / self.loss_scale

    def _stage_rank(self, stage: int) -> int:
        c = self.lm_coords
        return self.layout.language.rank_at(tp=c["tp"], cp=c["cp"], dp=c["dp"], pp=stage)

    # ---- backward ----------------------------------------------------------------------------
    def _backward(self, op: Op) -> None:
        if op.module != self.lm:
            embeddings, media = self.state.pop((op.module, op.microbatch))
            grad = self.bridge.recv_backward(op.module, op.microbatch, media)
            if embeddings.requires_grad:  # False where the replica had no media (no forward ran)
                torch.autograd.backward(embeddings, grad.to(embeddings.dtype))
            return
        stage, mb = op.stage, op.microbatch
        inputs, output = self.state.pop((self.lm, mb))
        if stage == self.layout.language.pp - 1:
            torch.autograd.backward(output)
        else:
            grad = self.p2p.recv(output.shape, output.dtype, self.device, self._stage_rank(stage + 1), "pipe_bwd", tag=mb)
            torch.autograd.backward(output, grad)
        if stage > 0:
            self.p2p.send(inputs.grad, self._stage_rank(stage - 1), "pipe_bwd", tag=mb)
            return
        for enc, emb in inputs.items():
            if enc in self.backward:
                self.bridge.send_backward(enc, mb, emb.grad, self.texts[mb])
