"""One optimizer step's forward and backward passes on this rank, following its step program.

The program (``plan.py``, placed by ``rendezvous.py``) interleaves this rank's operations
(``schedule.py``) with boundaries: before each operation the engine posts the boundary's
sends (outputs of earlier operations, kept in an outbox) and receives (into buffers sized
from this step's data), then the operation waits for its own inputs only, runs, and puts
its outputs in the outbox. For each operation:

* ``F(encoder)``: encode this replica's media slice and hand the projected embeddings to the
  bridge; keep them for the backward if the encoder or its projector trains.
* ``F(llm, 0)``: take the encoders' embeddings from the bridge, embed the text
  (``MimoModel.get_text_embeddings``), put the embeddings at the placeholder positions
  (``MimoModel.align_embeddings_by_token_positions``) and run the first LLM stage.
* ``F(llm, s>0)``: receive the previous stage's activations and run this stage.
* The last stage computes the per-token loss over its own TP group, normalised by the number
  of loss tokens of the WHOLE global batch, so gradients sum to those of the global mean.
* ``B(...)``: the reverse, sending activation gradients back along the same paths.

An Engine with no backward modules (validation: the forward-only program of
``step_programs(layout, m, backward=set())``) runs under ``torch.no_grad``, on the same
layout, bridge and data path as training.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ...config import JobConfig
from ..datasets.batching import StepBatch, TextBatch
from ..model.specs import ENCODER_KEY
from ..parallel.loss import vocab_parallel_cross_entropy
from ..parallel.p2p import P2P
from .clock import OpClock
from .plan import Message, StepProgram
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
    undecodable: list[int] = field(default_factory=list)
    """Step offsets of the samples dropped because their media failed to decode (every rank's)."""
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """'<module>/fwd' and '<module>/bwd' seconds of compute on this rank, and '<module>/wait':
    seconds its operations spent getting their inputs from other ranks (``clock.py``)."""


class Engine:
    def __init__(self, job: JobConfig, model, pgcs: dict, bridge, p2p: P2P, data, backward_modules: set[str],
                 program: StepProgram, device: torch.device, dtype: torch.dtype) -> None:
        self.job = job
        self.model = model
        self.pgcs = pgcs
        self.bridge = bridge
        self.p2p = p2p
        self.data = data
        """Gives :class:`StepBatch` es by step index (``datasets/loader.py``)."""
        self.backward = backward_modules
        self.program = program
        self.device = device
        self.dtype = dtype
        self.lm = job.layout.language_module
        self.layout = job.layout
        self.last_stage = self.layout.language.pp - 1
        self.hidden = job.language_model.hidden_size
        self.clock = OpClock(device)
        self.last_backward = {op.module: k for k, op in enumerate(program.ops) if op.kind == "B"}
        """Index of each module's last backward in the step: its gradients' all-reduce starts
        during that one (``PortableDataParallel.arm_grad_sync``)."""
        lm_coords = self.layout.language.coordinates(dist.get_rank())
        self.counts_loss = lm_coords is not None and lm_coords["tp"] == 0

    # ---- the step ---------------------------------------------------------------------------
    def run_step(self, step: int) -> StepOutput:
        self.out = StepOutput()
        self.bridge.stats.forward_bytes = self.bridge.stats.backward_bytes = 0
        self.state: dict = {}
        self.batch: StepBatch = self.data.step(step)
        self.out.undecodable = self.batch.undecodable
        self.bridge.begin_step(self.batch.texts)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_scale = self._global_loss_tokens()
        with torch.no_grad() if not self.backward else contextlib.nullcontext():
            self._run_program()
        self.p2p.wait_sends()
        self.bridge.end_step()
        self.state.clear()
        self.out.times = self.clock.totals()
        self.out.loss_sum = float(self.loss_sum)  # the step's only host synchronisation here
        return self.out

    def _run_program(self) -> None:
        program, outbox = self.program, {}
        self.clock.begin_step()
        for k, op in enumerate(program.ops):
            self.clock.start()
            self._post(k, outbox)
            inputs = {m: self.p2p.take(m) for m in program.inputs[k]}
            if self.last_backward.get(op.module) == k and op.module in self.model.data_parallel:
                self.model.data_parallel[op.module].arm_grad_sync()
            run = self._forward if op.kind == "F" else self._backward
            outbox.update(run(op, inputs, program.outputs[k]))
            self.clock.stop(op.module, "fwd" if op.kind == "F" else "bwd", str(op))
        self._post(len(program.ops), outbox)

    def _post(self, k: int, outbox: dict[Message, torch.Tensor]) -> None:
        """Post boundary ``k``: outputs waiting in the outbox, and buffers for inputs."""
        boundary = self.program.boundaries[k]
        sends = [(m, outbox.pop(m)) for m in boundary.sends]
        self.p2p.exchange(sends, [(m, self._buffer(m)) for m in boundary.receives])

    def _buffer(self, m: Message) -> torch.Tensor:
        if m.channel.startswith("pipe"):
            shape = (self.job.train.seq_length, self.job.train.micro_batch_size, self.hidden)
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        if m.channel == "bridge_fwd":
            return self.bridge.forward_buffer(m, self.batch.texts[m.microbatch])
        return self.bridge.backward_buffer(m, self.batch.media[m.route.module][m.microbatch])

    def _global_loss_tokens(self) -> torch.Tensor:
        """Loss tokens in the whole global batch (sum over LLM replicas), on the device."""
        if self.batch.texts is None:
            return torch.ones((), device=self.device)
        local = torch.tensor([float(sum(t.num_loss_tokens for t in self.batch.texts))], device=self.device)
        dist.all_reduce(local, group=self.pgcs[self.lm].dp_cp)
        return local.clamp_min(1.0)

    # ---- forward ---------------------------------------------------------------------------
    # Each operation takes its received inputs and the messages it must fill, calls
    # ``self.clock.ready()`` once its inputs are complete (after the bridge's broadcast or
    # all-to-all), and returns (message, tensor) pairs for the outbox.
    def _forward(self, op: Op, inputs: dict[Message, torch.Tensor], outputs: list[Message]) -> list:
        if op.module != self.lm:
            return self._encoder_forward(op, outputs)
        return self._llm_forward(op, inputs, outputs)

    def _encoder_forward(self, op: Op, outputs: list[Message]) -> list:
        module, mb = op.module, op.microbatch
        media = self.batch.media[module][mb]
        self.clock.ready()
        embeddings = encode(self.model, self.job, module, media.items.to(self.device, self.dtype, non_blocking=True))
        if module in self.backward:
            self.state[(module, mb)] = embeddings
        return self.bridge.send_forward(module, mb, embeddings, media, outputs)

    def _llm_forward(self, op: Op, inputs: dict, messages: list[Message]) -> list:
        stage, mb = op.stage, op.microbatch
        text = self.batch.texts[mb]
        lm = self.model.language_model
        needs_grad = self.lm in self.backward
        if stage == 0:
            received = {}
            for enc in self.layout.encoder_names:
                parts = [t for m, t in inputs.items() if m.route.module == enc]
                emb = self.bridge.embeddings(enc, mb, text, parts).to(self.dtype)
                received[enc] = emb.detach().requires_grad_(enc in self.backward)
            self.clock.ready()
            combined = decoder_input(self.model, self.job, text.input_ids.to(self.device), received)
            output = lm(input_ids=None, position_ids=None, attention_mask=None, decoder_input=combined)
            saved = received
        else:
            (x,) = inputs.values()
            self.clock.ready()
            x.requires_grad_(needs_grad)
            lm.set_input_tensor(x)
            output = lm(input_ids=None, position_ids=None, attention_mask=None)
            saved = x
        outputs = []
        if stage == self.last_stage:
            output = self._loss(output, text)
        else:
            outputs = [(m, output.detach()) for m in messages]
        if needs_grad:
            self.state[(self.lm, mb)] = (saved, output)
        return outputs

    def _loss(self, logits: torch.Tensor, text: TextBatch) -> torch.Tensor:
        labels = text.labels.to(self.device, non_blocking=True)
        mask = text.loss_mask.to(self.device, non_blocking=True)
        per_token = vocab_parallel_cross_entropy(logits, labels, self.job.language_model.vocab_size, self.pgcs[self.lm].tp)
        loss_sum = (per_token * mask).sum()
        if self.counts_loss:
            self.loss_sum += loss_sum.detach()
            self.out.loss_tokens += text.num_loss_tokens  # counted on the host from the host's mask
        return loss_sum / self.loss_scale

    # ---- backward ----------------------------------------------------------------------------
    def _backward(self, op: Op, inputs: dict, messages: list[Message]) -> list:
        mb = op.microbatch
        if op.module != self.lm:
            media = self.batch.media[op.module][mb]
            grad = self.bridge.gradient(op.module, mb, media, list(inputs.values()))
            self.clock.ready()
            embeddings = self.state.pop((op.module, mb))
            if embeddings.requires_grad:  # False where the replica had no media (no forward ran)
                torch.autograd.backward(embeddings, grad.to(embeddings.dtype))
            return []
        saved, output = self.state.pop((self.lm, mb))
        if op.stage == self.last_stage:
            self.clock.ready()
            torch.autograd.backward(output)
        else:
            (grad,) = inputs.values()
            self.clock.ready()
            torch.autograd.backward(output, grad)
        if op.stage > 0:
            return [(m, saved.grad) for m in messages]
        outputs = []
        for enc, emb in saved.items():
            if enc in self.backward:
                mine = [m for m in messages if m.route.module == enc]
                outputs += self.bridge.send_backward(enc, mb, emb.grad, self.batch.texts[mb], mine)
        return outputs
