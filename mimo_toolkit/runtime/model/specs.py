"""Recipe architectures -> megatron-core TransformerConfigs and ModuleSpecs.

The backend is a swap, not a fork: :func:`layer_spec` returns transformer-engine layers when
TE is installed on a GPU machine and megatron-core's local layers with
:class:`~mimo_toolkit.runtime.model.portable.PortableAttention` otherwise. The two name some
parameters differently (TE fuses each layer norm into the next linear layer);
:func:`local_parameter_names` reads a TE state dict under the local names. Everything else (the
GPT model, the CLIP ViT, the audio encoder, the projectors and the MIMO modality
submodules) is the same ModuleSpec either way.

Specs carry no process groups; ``MimoModelProvider`` injects each module's
``pg_collection`` (and pipeline stage flags) into deep copies at build time.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from megatron.core.activations import quick_gelu
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.models.mimo.submodules.audio import AudioModalitySubmodules
from megatron.core.models.mimo.submodules.vision import VisionModalitySubmodules
from megatron.core.models.vision.multimodal_projector import MultimodalProjector
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from ...config import AudioEncoder, JobConfig, LanguageModel, TransformerArch, VisionEncoder
from ...layout import ModuleParallelismConfig
from .audio_encoder import WhisperStyleEncoder
from .portable import PortableAttention, PortableCLIPViTModel

Backend = Literal["te", "local"]

#: The encoder inside each modality submodule (MimoModel's ``{"encoders": {name: spec}}``).
ENCODER_KEY = {"vision": "clip", "audio": "whisper"}


@functools.cache
def detect_backend(gpu: bool | None = None) -> Backend:
    """transformer-engine on GPU machines where it is installed; megatron-core's local layers
    otherwise (``gpu``: whether this process computes on a GPU; default: CUDA is available).

    Never silently: without TE a GPU job trains with local layers (slower: no fused kernels),
    and says so; TE installed but failing to import (CUDA, driver or torch ABI mismatch) is
    an error, because falling back would change speed and checkpoint names unnoticed."""
    if not (torch.cuda.is_available() if gpu is None else gpu):
        return "local"
    if importlib.util.find_spec("transformer_engine") is None:
        warnings.warn("transformer-engine is not installed: this GPU job uses megatron-core's local layers "
                      "(slower); install the toolkit's `te` extra for fused TE layers", stacklevel=2)
        return "local"
    try:
        import transformer_engine.pytorch  # noqa: F401
        import megatron.core.extensions.transformer_engine  # noqa: F401
    except Exception as exc:  # re-raised: whatever a broken native install throws (ImportError, OSError, ...)
        raise RuntimeError(
            f"transformer-engine is installed but does not import ({type(exc).__name__}: {exc}); fix it (its "
            "CUDA and torch builds must match this machine's) or uninstall it to train with megatron-core's local layers"
        ) from exc
    return "te"


#: transformer-engine fuses each layer norm into the linear layer after it
#: (``TELayerNormColumnParallelLinear``); megatron-core's local layers keep it apart. This is
#: megatron-core's own local GPT spec's ``sharded_state_dict_keys_map``, read backwards.
TE_FUSED_NORMS = {
    "self_attention.linear_qkv.layer_norm_": "input_layernorm.",
    "mlp.linear_fc1.layer_norm_": "pre_mlp_layernorm.",
}


def local_parameter_names(state: dict) -> dict:
    """A state dict written by TE layers under the local layers' names: fused norms split out,
    and TE's ``_extra_state`` entries (FP8 scaling metadata, no weights) emptied, as local
    layers keep none (theirs is None). A state dict of local layers passes unchanged."""
    out = {}
    for key, value in state.items():
        for fused, local in TE_FUSED_NORMS.items():
            key = key.replace(fused, local)
        out[key] = None if key.endswith("._extra_state") else value
    return out


def _activation(name: str) -> tuple:
    """(activation_func, gated_linear_unit) for an architecture's activation name."""
    return {"gelu": (F.gelu, False), "quick_gelu": (quick_gelu, False), "swiglu": (F.silu, True)}[name]


#: The projector's activation by name (gelu is erf-based, as Hugging Face's "gelu").
PROJECTOR_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "silu": F.silu,
    "relu": F.relu,
}


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Vocabulary padded so every TP rank holds an equal slice (padding is masked in the loss)."""
    step = multiple * tp
    return -(-vocab_size // step) * step


def _leave_uninitialised(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


#: megatron-core sets the tensor-parallel attributes of a weight (partition dim and stride)
#: only inside its initialisation routines, so they must run; with these init methods they
#: draw no random numbers. The provider then initialises every parameter from canonical
#: per-parameter seeds so that every layout starts from the same full weights
#: (``mimo_toolkit.runtime.model.init``).
NO_RANDOM_INIT = {
    "perform_initialization": True,
    "use_cpu_initialization": True,
    "init_method": _leave_uninitialised,
    "output_layer_init_method": _leave_uninitialised,
}


def transformer_config(arch: TransformerArch, par: ModuleParallelismConfig, dtype: torch.dtype) -> TransformerConfig:
    """A TransformerConfig for one module on its own parallel layout."""
    act, gated = _activation(arch.activation)
    return TransformerConfig(
        num_layers=arch.built_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.query_groups,
        ffn_hidden_size=arch.ffn_size,
        normalization=arch.normalization,
        layernorm_epsilon=arch.layernorm_epsilon,
        activation_func=act,
        gated_linear_unit=gated,
        add_bias_linear=arch.add_bias_linear,
        init_method_std=arch.init_method_std,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        context_parallel_size=par.cp,
        pipeline_dtype=dtype,
        params_dtype=torch.float32,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        **NO_RANDOM_INIT,
    )


def layer_spec(backend: Backend, causal: bool, normalization: str) -> ModuleSpec:
    """One transformer layer: causal self-attention for the LLM, bidirectional for encoders."""
    mask = AttnMaskType.causal if causal else AttnMaskType.no_mask
    if backend == "te":
        from megatron.core.extensions.transformer_engine import (
            TEDotProductAttention,
            TELayerNormColumnParallelLinear,
            TERowParallelLinear,
        )
        from megatron.core.transformer.identity_op import IdentityOp

        return ModuleSpec(
            module=TransformerLayer,
            submodules=TransformerLayerSubmodules(
                self_attention=ModuleSpec(
                    module=SelfAttention,
                    params={"attn_mask_type": mask},
                    submodules=SelfAttentionSubmodules(
                        linear_qkv=TELayerNormColumnParallelLinear,
                        core_attention=TEDotProductAttention,
                        linear_proj=TERowParallelLinear,
                        q_layernorm=IdentityOp,
                        k_layernorm=IdentityOp,
                    ),
                ),
                self_attn_bda=get_bias_dropout_add,
                mlp=ModuleSpec(
                    module=MLP,
                    submodules=MLPSubmodules(linear_fc1=TELayerNormColumnParallelLinear, linear_fc2=TERowParallelLinear),
                ),
                mlp_bda=get_bias_dropout_add,
            ),
        )
    local = LocalSpecProvider()
    norm = local.layer_norm(rms_norm=normalization == "RMSNorm")
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=local.column_parallel_linear(),
                    core_attention=PortableAttention,
                    linear_proj=local.row_parallel_linear(),
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(
                    linear_fc1=local.column_parallel_linear(), linear_fc2=local.row_parallel_linear()
                ),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def _norm_impl(backend: Backend, normalization: str):
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return LocalSpecProvider().layer_norm(rms_norm=normalization == "RMSNorm")


# ---- modules ---------------------------------------------------------------------------


def language_model_spec(arch: LanguageModel, par: ModuleParallelismConfig, backend: Backend, dtype: torch.dtype) -> ModuleSpec:
    """The LLM: a megatron-core GPTModel returning vocab-parallel logits (loss computed outside)."""
    return ModuleSpec(
        module=GPTModel,
        params={
            "config": transformer_config(arch, par, dtype),
            "transformer_layer_spec": layer_spec(backend, causal=True, normalization=arch.normalization),
            "vocab_size": padded_vocab_size(arch.vocab_size, par.tp),
            "max_sequence_length": arch.max_sequence_length,
            "position_embedding_type": arch.position_embedding,
            "rotary_base": arch.rotary_base,
            "rope_scaling": arch.rope_scaling_factor is not None,
            "rope_scaling_factor": arch.rope_scaling_factor or 8.0,
            "share_embeddings_and_output_weights": arch.tie_embeddings,
            "parallel_output": True,
        },
    )


def projector_spec(arch: VisionEncoder | AudioEncoder, llm: LanguageModel, par: ModuleParallelismConfig, dtype: torch.dtype) -> ModuleSpec:
    """MultimodalProjector from the encoder's hidden size to the LLM's (tensor parallel over the
    encoder module's TP group, which the provider injects as ``tp_group``)."""
    config = TransformerConfig(
        num_layers=1,
        hidden_size=llm.hidden_size,
        ffn_hidden_size=arch.projector_ffn_hidden_size or llm.hidden_size,
        num_attention_heads=par.tp,  # required by TransformerConfig (a multiple of TP); unused by the MLP
        activation_func=PROJECTOR_ACTIVATIONS[arch.projector_activation],
        add_bias_linear=True,
        tensor_model_parallel_size=par.tp,
        pipeline_dtype=dtype,
        bias_activation_fusion=False,
        gradient_accumulation_fusion=False,
        hidden_dropout=0.0,
        init_method_std=llm.init_method_std,
        **NO_RANDOM_INIT,
    )
    local = LocalSpecProvider()
    return ModuleSpec(
        module=MultimodalProjector,
        params={
            "config": config,
            "submodules": MLPSubmodules(linear_fc1=local.column_parallel_linear(), linear_fc2=local.row_parallel_linear()),
            "projector_type": arch.projector,
            "input_size": arch.hidden_size,
        },
    )


def _encoder_params(arch: VisionEncoder | AudioEncoder) -> tuple[type, type, dict]:
    """(submodules class, encoder class, encoder-specific params) of an encoder kind."""
    if isinstance(arch, VisionEncoder):
        return VisionModalitySubmodules, PortableCLIPViTModel, {
            "add_class_token": arch.class_token,
            "class_token_len": 1,
            "patch_dim": arch.patch_size,
            "img_h": arch.image_size,
            "img_w": arch.image_size,
            "keep_class_token": arch.keep_class_token,
        }
    return AudioModalitySubmodules, WhisperStyleEncoder, {
        "num_mel_bins": arch.num_mel_bins,
        "num_frames": arch.num_frames,
    }


def encoder_submodules_spec(arch: VisionEncoder | AudioEncoder, llm: LanguageModel, par: ModuleParallelismConfig,
                            backend: Backend, dtype: torch.dtype) -> ModuleSpec:
    """MIMO modality submodules: the encoder (CLIP ViT, or Whisper-style for audio) + projector."""
    submodules_cls, encoder_cls, params = _encoder_params(arch)
    params["transformer_config"] = transformer_config(arch, par, dtype)
    params["transformer_layer_spec"] = layer_spec(backend, causal=False, normalization=arch.normalization)
    if encoder_cls is PortableCLIPViTModel:
        params["ln_pre_impl"] = _norm_impl(backend, arch.normalization)
    encoder = ModuleSpec(module=encoder_cls, params=params)
    return ModuleSpec(
        module=submodules_cls,
        submodules={"encoders": {ENCODER_KEY[arch.KIND]: encoder}, "input_projections": [projector_spec(arch, llm, par, dtype)]},
    )


@dataclass
class MimoSpecs:
    """Everything ``MimoModelProvider`` needs from a recipe, as megatron-core specs."""

    language_model_spec: ModuleSpec
    modality_submodules_spec: dict[str, ModuleSpec]
    special_token_ids: dict[str, int]


def mimo_specs(job: JobConfig, backend: Backend, dtype: torch.dtype) -> MimoSpecs:
    """Build the specs of every module of a job (on every rank; cheap, nothing allocated)."""
    layout = job.layout
    llm = job.language_model
    specs = {}
    for name, arch in job.encoders.items():
        specs[name] = encoder_submodules_spec(arch, llm, layout.module_parallelisms[name], backend, dtype)
    return MimoSpecs(
        language_model_spec=language_model_spec(llm, layout.language, backend, dtype),
        modality_submodules_spec=specs,
        special_token_ids=dict(layout.special_token_ids),
    )
