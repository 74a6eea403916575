"""Parameter counts computed from a recipe's architecture dataclasses.

The planner never builds a model: memory, gradient traffic and FLOPs all follow from these
counts, so they are written out per layer from the same fields megatron-core reads
(hidden size, heads, query groups, MLP size, activation, biases, norms). Checked in the tests
against published totals: Vicuna-7B ~6.7B, CLIP ViT-L/14 ~304M, Whisper-base encoder ~20M.

Parameters are split by where they live in a pipeline (first stage, the layers, last stage)
because per-GPU memory is set by the heaviest stage, and the projector is kept apart because
it is frozen or trained on its own (``freeze.<encoder>_projector``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import AudioEncoder, LanguageModel, ModuleArch, TransformerArch, VisionEncoder


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of one module, by pipeline position."""

    per_layer: int
    """All parameters of one transformer layer (weights, biases, norms)."""
    layer_matmul: int
    """Weights of the linear maps of one layer: what a token multiplies through (FLOPs)."""
    num_layers: int
    first: int
    """Only on the first pipeline stage: embeddings, patch/conv stem, position tables."""
    last: int
    """Only on the last pipeline stage: final norm, LM head, projector (projector included)."""
    projector: int
    """The encoder's projector (part of ``last``); 0 for the language model."""
    shared: int = 0
    """Counted in both ``first`` and ``last`` but stored once (tied embeddings at pp=1)."""

    @property
    def layers(self) -> int:
        return self.per_layer * self.num_layers

    @property
    def total(self) -> int:
        """Unique parameters of the module, projector included."""
        return self.layers + self.first + self.last - self.shared

    @property
    def body(self) -> int:
        """Everything but the projector."""
        return self.total - self.projector


def _norm(arch: TransformerArch, width: int) -> int:
    return 2 * width if arch.normalization == "LayerNorm" else width


def kv_width(arch: TransformerArch) -> int:
    """Width of K (and of V) under grouped-query attention."""
    return arch.hidden_size * arch.query_groups // arch.num_attention_heads


def layer_params(arch: TransformerArch) -> tuple[int, int]:
    """(all parameters, matmul weights) of one transformer layer."""
    h, f, kv = arch.hidden_size, arch.ffn_size, kv_width(arch)
    attn = 2 * h * h + 2 * h * kv  # Q, O and K, V
    gated = arch.activation == "swiglu"
    mlp = (3 if gated else 2) * h * f
    matmul = attn + mlp
    bias = 0
    if arch.add_bias_linear:
        bias = (2 * h + 2 * kv) + ((2 * f if gated else f) + h)
    return matmul + bias + 2 * _norm(arch, h), matmul


def projector_params(arch: VisionEncoder | AudioEncoder, llm_hidden: int) -> tuple[int, int]:
    """(all parameters, matmul weights) of the encoder's projector into the LLM's width."""
    e = arch.hidden_size
    if arch.projector == "affine":
        return e * llm_hidden + llm_hidden, e * llm_hidden
    inner = arch.projector_ffn_hidden_size or llm_hidden
    matmul = e * inner + inner * llm_hidden
    return matmul + inner + llm_hidden, matmul


def count_params(arch: ModuleArch, llm_hidden: int) -> ParamCounts:
    """Parameter counts of one module (``llm_hidden`` sizes an encoder's projector)."""
    per_layer, matmul = layer_params(arch)
    h = arch.hidden_size
    final_norm = _norm(arch, h)
    if isinstance(arch, LanguageModel):
        embed = arch.vocab_size * h
        positions = arch.max_sequence_length * h if arch.position_embedding == "learned_absolute" else 0
        # Tied embeddings: the last stage still holds the (shared) output matrix.
        return ParamCounts(
            per_layer, matmul, arch.num_layers, first=embed + positions, last=final_norm + embed,
            projector=0, shared=embed if arch.tie_embeddings else 0,
        )
    proj, _ = projector_params(arch, llm_hidden)
    if isinstance(arch, VisionEncoder):
        patches = (arch.image_size // arch.patch_size) ** 2
        tokens = patches + (1 if arch.class_token else 0)
        stem = arch.num_channels * arch.patch_size**2 * h  # conv patch embedding, no bias (CLIP)
        first = stem + (h if arch.class_token else 0) + tokens * h + final_norm  # + pre-norm
    else:
        conv = arch.num_mel_bins * h * 3 + h + h * h * 3 + h  # two kernel-3 convolutions
        first = conv + arch.tokens_per_sample * h  # + position table
    return ParamCounts(per_layer, matmul, arch.num_layers, first=first, last=final_norm + proj, projector=proj)
