"""Forward FLOPs per sample and the work multiplier of each part of a module.

Forward FLOPs of a transformer over ``s`` tokens are ``2 * s * W`` for the ``W`` matmul
weights a token passes through, plus attention scores and the weighted sum:
``4 * L * s^2 * h * c`` (``c = 1`` bidirectional encoders, ``0.5`` causal decoders whose
flash-attention kernels skip the masked half). For a GPT with a 4h MLP and ``c = 1`` this is
exactly Narayanan et al. (2021): ``24 s L h^2 (1 + s / 6h + V / 12 h L)``, checked in the tests.

The work multiplier says how many forward-equivalents a part costs per step:
3 trained (forward, input gradients, weight gradients), 2 frozen but with gradients flowing
through it to a trained part in front (input gradients only), 1 frozen with nothing trained
in front (forward only). An encoder body sits at the front of the model: frozen, it costs 1
even when its projector trains, because the projector's weight gradient needs only the body's
output, never a gradient into the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import LanguageModel, ModuleArch, VisionEncoder
from .params import count_params, projector_params

if TYPE_CHECKING:  # pragma: no cover
    from ..config import JobConfig

#: Attention FLOPs factor of causal decoders (flash attention computes the unmasked half).
CAUSAL = 0.5
BIDIRECTIONAL = 1.0


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs of one sample through a module, by pipeline position."""

    layers: float
    """The transformer layers (attention included)."""
    first: float
    """Work only the first pipeline stage does: the patch or convolution stem."""
    last: float
    """Work only the last stage does besides the projector: the LM head."""
    projector: float
    """The encoder's projector (0 for the language model; on the last stage)."""
    attention: float
    """The part of ``layers`` spent in attention scores and values (context parallelism hides
    its communication behind it)."""

    @property
    def body(self) -> float:
        return self.layers + self.first + self.last

    @property
    def total(self) -> float:
        return self.body + self.projector


def attention_flops(layers: int, tokens: int, hidden: int, factor: float) -> float:
    """``4 L s^2 h c``: QK^T and the attention-weighted sum of V, all heads."""
    return 4.0 * layers * tokens * tokens * hidden * factor


def forward_flops(arch: ModuleArch, llm_hidden: int, seq_length: int, causal: float = CAUSAL) -> ForwardFlops:
    """Forward FLOPs per sample; ``seq_length`` is the LLM's (encoders use their own tokens)."""
    counts = count_params(arch, llm_hidden)
    h, layers = arch.hidden_size, arch.num_layers
    trunk = counts.layer_matmul * layers
    if isinstance(arch, LanguageModel):
        s = seq_length
        attn = attention_flops(layers, s, h, causal)
        return ForwardFlops(2.0 * s * trunk + attn, 0.0, 2.0 * s * arch.vocab_size * h, 0.0, attn)
    _, proj = projector_params(arch, llm_hidden)
    s = trunk_tokens(arch, seq_length)
    if isinstance(arch, VisionEncoder):
        patches = (arch.image_size // arch.patch_size) ** 2
        stem = 2.0 * patches * arch.num_channels * arch.patch_size**2 * h
    else:  # two kernel-3 convolutions, the second with stride 2
        stem = 2.0 * arch.num_frames * arch.num_mel_bins * h * 3 + 2.0 * s * h * h * 3
    attn = attention_flops(layers, s, h, BIDIRECTIONAL)
    return ForwardFlops(2.0 * s * trunk + attn, stem, 0.0, 2.0 * arch.tokens_per_sample * proj, attn)


def trunk_tokens(arch: ModuleArch, seq_length: int) -> int:
    """Tokens that pass through the module's transformer layers per sample."""
    if isinstance(arch, LanguageModel):
        return seq_length
    if isinstance(arch, VisionEncoder):
        return (arch.image_size // arch.patch_size) ** 2 + (1 if arch.class_token else 0)
    return arch.tokens_per_sample


def work_multiplier(trains: bool, gradient_flows_through: bool) -> int:
    """Forward-equivalents per step: 3 trained, 2 frozen with gradients through, 1 forward only."""
    if trains:
        return 3
    return 2 if gradient_flows_through else 1


@dataclass(frozen=True)
class PartWork:
    """Whether each part of one module trains, and its work multipliers."""

    name: str
    body_trains: bool
    projector_trains: bool
    """Always False for the language model (it has no projector)."""
    body_multiplier: int
    projector_multiplier: int
    """0 for the language model."""


def training_work(job: "JobConfig") -> list[PartWork]:
    """Every module's work multipliers from the job's freezing, encoders first, then the LLM.

    The LLM's body costs 2 even when frozen if any encoder part in front of it trains
    (gradients flow through it); a projector costs 2 when frozen behind a trained encoder."""
    lm_name = job.layout.language_module
    upstream_trains = False
    out: list[PartWork] = []
    for name in [*job.encoders, lm_name]:
        is_lm = name == lm_name
        body_trains = not job.is_frozen(name)
        proj_trains = False if is_lm else not job.is_frozen(f"{name}_projector")
        body_mult = work_multiplier(body_trains, is_lm and upstream_trains)
        proj_mult = 0 if is_lm else work_multiplier(proj_trains, body_trains)
        if not is_lm:
            upstream_trains = upstream_trains or body_trains or proj_trains
        out.append(PartWork(name, body_trains, proj_trains, body_mult, proj_mult))
    return out


def step_flops(job: "JobConfig") -> float:
    """Model FLOPs of one optimizer step: every module's forward + backward work (frozen parts
    forward only, no recomputation counted) over the global batch. The numerator of MFU, for
    the runtime's metrics and the planner's predictions alike."""
    lm_hidden = job.language_model.hidden_size
    seq = job.train.seq_length
    per_sample = 0.0
    for part in training_work(job):
        f = forward_flops(job.model[part.name], lm_hidden, seq)
        per_sample += part.body_multiplier * f.body + part.projector_multiplier * f.projector
    return per_sample * job.train.global_batch_size
