"""A checkpoint's ``config.json`` -> the recipe's architecture fields, per module kind.

Accepted checkpoints (``architectures[0]`` of config.json):

========  ===================================================================================
module    checkpoint classes
========  ===================================================================================
llm       ``LlamaForCausalLM`` (Vicuna, Llama-2, Llama-3 with GQA, tied or untied embeddings);
          ``LlavaForConditionalGeneration`` (its language model)
vision    ``CLIPVisionModel``, ``CLIPModel`` (its vision tower);
          ``LlavaForConditionalGeneration`` (its vision tower AND its projector)
audio     ``WhisperModel``, ``WhisperForConditionalGeneration`` (the encoder)
========  ===================================================================================

Third-party config.json files often omit fields equal to the class defaults (llava-hf's
text_config names six fields), so each family's defaults (transformers 5.x) are filled in
before the fields are read. Nothing here imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .checkpoint import HFCheckpoint

ACCEPTED = {
    "llm": ("LlamaForCausalLM", "LlavaForConditionalGeneration"),
    "vision": ("CLIPVisionModel", "CLIPModel", "LlavaForConditionalGeneration"),
    "audio": ("WhisperModel", "WhisperForConditionalGeneration"),
}

LLAMA_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu", "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000.0, "attention_bias": False,
    "mlp_bias": False, "head_dim": None,
}
CLIP_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
#: LlavaConfig's vision_config defaults: CLIP ViT-L/14-336
LLAVA_VISION_DEFAULTS = {
    **CLIP_DEFAULTS, "intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 336,
    "num_hidden_layers": 24, "num_attention_heads": 16,
}
LLAVA_DEFAULTS = {
    "image_token_index": 32000, "projector_hidden_act": "gelu", "vision_feature_select_strategy": "default",
    "vision_feature_layer": -2, "multimodal_projector_bias": True,
}
WHISPER_DEFAULTS = {
    "num_mel_bins": 80, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536, "d_model": 384,
    "max_source_positions": 1500, "activation_function": "gelu",
}

#: Hugging Face activation names -> the recipe's
ENCODER_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}
PROJECTOR_ACTIVATIONS = {
    "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu",
    "silu": "silu", "swish": "silu", "relu": "relu",
}
#: megatron-core 0.16.1 fixes Llama-3 RoPE scaling's other parameters (rotary_pos_embedding.py)
LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass
class Implied:
    """An architecture field's value according to config.json, and the key it came from."""

    field: str
    value: Any
    key: str


@dataclass
class Source:
    """What one checkpoint directory provides to one module."""

    checkpoint: HFCheckpoint
    family: str
    """'llama', 'clip' or 'whisper': the tensors the module takes."""
    config: dict
    """The family's (sub-)config with its defaults filled in."""
    llava: dict | None = None
    """The LLaVA top-level config (defaults filled) when the checkpoint is a LLaVA one."""
    section: str = ""
    """Where ``config`` sits in config.json ('text_config.', 'vision_config.' or '')."""
    implied: list[Implied] = field(default_factory=list)
    max_positions: int | None = None
    """The most positions the checkpoint was trained for (LLMs)."""

    def imply(self, name: str, value: Any, key: str) -> None:
        self.implied.append(Implied(name, value, key))


def open_source(kind: str, directory: str, where: str) -> Source:
    """Read ``directory`` as the pretrained weights of a ``kind`` module (``where`` names the field)."""
    ckpt = HFCheckpoint.open(directory, where)
    arch = ckpt.architecture
    if arch not in ACCEPTED[kind]:
        raise UserError(
            f"{where}={directory}: config.json architectures={ckpt.config.get('architectures')}; a {kind} module "
            f"takes {', '.join(ACCEPTED[kind])}"
        )
    if kind == "llm":
        return _llama(ckpt, where)
    if kind == "vision":
        return _clip(ckpt, where)
    return _whisper(ckpt)


def _sub(ckpt: HFCheckpoint, key: str, defaults: dict, model_type: str, where: str) -> dict:
    raw = ckpt.config.get(key) if key else ckpt.config
    raw = raw if isinstance(raw, dict) else {}
    found = raw.get("model_type", model_type)
    if found != model_type:
        raise UserError(f"{where}={ckpt.path}: config.json {key}.model_type={found!r}; only {model_type!r} is supported")
    return {**defaults, **{k: v for k, v in raw.items() if v is not None or k not in defaults}}


def _llava(ckpt: HFCheckpoint) -> dict:
    return {**LLAVA_DEFAULTS, **{k: v for k, v in ckpt.config.items() if k in LLAVA_DEFAULTS}}


def _llama(ckpt: HFCheckpoint, where: str) -> Source:
    is_llava = ckpt.architecture.startswith("Llava")
    section = "text_config" if is_llava else ""
    config = _sub(ckpt, section, LLAMA_DEFAULTS, "llama", where)
    src = Source(ckpt, "llama", config, _llava(ckpt) if is_llava else None, f"{section}." if section else "")
    p = src.section
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    if config.get("head_dim") not in (None, hidden // heads):
        raise UserError(f"{ckpt.path}/config.json: {p}head_dim={config['head_dim']} differs from hidden_size/heads={hidden // heads}")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise UserError(f"{ckpt.path}/config.json: {p}{flag}=true; the Llama import takes bias-free linear layers")
    if config["hidden_act"] != "silu":
        raise UserError(f"{ckpt.path}/config.json: {p}hidden_act={config['hidden_act']!r}; Llama's MLP is SwiGLU (silu)")
    for name, key in (("num_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"),
                      ("num_attention_heads", "num_attention_heads"), ("ffn_hidden_size", "intermediate_size"),
                      ("layernorm_epsilon", "rms_norm_eps"), ("vocab_size", "vocab_size"),
                      ("tie_embeddings", "tie_word_embeddings")):
        src.imply(name, config[key], p + key)
    src.imply("num_query_groups", config["num_key_value_heads"] or heads, p + "num_key_value_heads")
    src.imply("normalization", "RMSNorm", p + "model_type")
    src.imply("activation", "swiglu", p + "hidden_act")
    src.imply("add_bias_linear", False, p + "attention_bias")
    src.imply("position_embedding", "rope", p + "model_type")
    theta, factor = rope(config, f"{ckpt.path}/config.json: {p}")
    src.imply("rotary_base", theta, p + "rope_theta")
    src.imply("rope_scaling_factor", factor, p + "rope_scaling")
    src.max_positions = config["max_position_embeddings"]
    return src


def rope(config: dict, where: str) -> tuple[int, float | None]:
    """(rotary base, Llama-3 scaling factor or None) from either config.json dialect:
    ``rope_theta`` + ``rope_scaling`` (transformers 4.x) or ``rope_parameters`` (5.x)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    both = {**scaling, **params}
    theta = float(params.get("rope_theta", config.get("rope_theta") or 10000.0))
    if theta != int(theta):
        raise UserError(f"{where}rope_theta={theta} is not an integer (megatron-core takes an integer rotary base)")
    kind = both.get("rope_type") or both.get("type") or "default"
    if kind == "default":
        return int(theta), None
    if kind != "llama3":
        raise UserError(f"{where}rope type {kind!r}; the import supports default and llama3 RoPE")
    for key, fixed in LLAMA3_ROPE_FIXED.items():
        if key in both and float(both[key]) != fixed:
            raise UserError(f"{where}rope {key}={both[key]}; megatron-core 0.16.1 fixes it at {fixed}")
    return int(theta), float(both["factor"])


def _clip(ckpt: HFCheckpoint, where: str) -> Source:
    is_llava = ckpt.architecture.startswith("Llava")
    is_clip_model = ckpt.architecture == "CLIPModel"
    section = "vision_config" if (is_llava or is_clip_model) else ""
    defaults = LLAVA_VISION_DEFAULTS if is_llava else CLIP_DEFAULTS
    config = _sub(ckpt, section, defaults, "clip_vision_model", where)
    src = Source(ckpt, "clip", config, _llava(ckpt) if is_llava else None, f"{section}." if section else "")
    p = src.section
    act = config["hidden_act"]
    if act not in ENCODER_ACTIVATIONS:
        raise UserError(f"{ckpt.path}/config.json: {p}hidden_act={act!r}; CLIP towers use quick_gelu or gelu")
    if config["num_channels"] != 3:
        raise UserError(f"{ckpt.path}/config.json: {p}num_channels={config['num_channels']}; the ViT takes RGB (3)")
    for name, key in (("num_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"),
                      ("num_attention_heads", "num_attention_heads"), ("ffn_hidden_size", "intermediate_size"),
                      ("layernorm_epsilon", "layer_norm_eps"), ("image_size", "image_size"),
                      ("patch_size", "patch_size")):
        src.imply(name, config[key], p + key)
    src.imply("num_query_groups", config["num_attention_heads"], p + "num_attention_heads")
    src.imply("activation", ENCODER_ACTIVATIONS[act], p + "hidden_act")
    src.imply("normalization", "LayerNorm", p + "model_type")
    src.imply("add_bias_linear", True, p + "model_type")
    src.imply("class_token", True, p + "model_type")
    if src.llava is not None:
        _llava_vision(src)
    return src


def _llava_vision(src: Source) -> None:
    """LLaVA's feature selection and projector, which the vision module takes too."""
    llava, path = src.llava, f"{src.checkpoint.path}/config.json"
    layer = llava["vision_feature_layer"]
    if not isinstance(layer, int):
        raise UserError(f"{path}: vision_feature_layer={layer}; a single layer is supported, not a list")
    strategy = llava["vision_feature_select_strategy"]
    if strategy not in ("default", "full"):
        raise UserError(f"{path}: vision_feature_select_strategy={strategy!r}; expected default or full")
    act = llava["projector_hidden_act"]
    if act not in PROJECTOR_ACTIVATIONS:
        raise UserError(f"{path}: projector_hidden_act={act!r}; supported: {', '.join(PROJECTOR_ACTIVATIONS)}")
    if not llava["multimodal_projector_bias"]:
        raise UserError(f"{path}: multimodal_projector_bias=false; the projector has biases")
    # the projector's sizes (vision hidden -> text hidden -> text hidden) are checked by its tensors' shapes
    src.imply("feature_layer", layer, "vision_feature_layer")
    src.imply("keep_class_token", strategy == "full", "vision_feature_select_strategy")
    src.imply("projector", "mlp", "multi_modal_projector")
    src.imply("projector_activation", PROJECTOR_ACTIVATIONS[act], "projector_hidden_act")


def _whisper(ckpt: HFCheckpoint) -> Source:
    config = {**WHISPER_DEFAULTS, **ckpt.config}
    src = Source(ckpt, "whisper", config)
    act = config["activation_function"]
    if act != "gelu":
        raise UserError(f"{ckpt.path}/config.json: activation_function={act!r}; the Whisper encoder uses gelu")
    for name, key in (("num_layers", "encoder_layers"), ("hidden_size", "d_model"),
                      ("num_attention_heads", "encoder_attention_heads"), ("ffn_hidden_size", "encoder_ffn_dim"),
                      ("num_mel_bins", "num_mel_bins")):
        src.imply(name, config[key], key)
    src.imply("num_query_groups", config["encoder_attention_heads"], "encoder_attention_heads")
    src.imply("num_frames", 2 * config["max_source_positions"], "max_source_positions (x2: the stride-2 stem)")
    src.imply("activation", "gelu", "activation_function")
    src.imply("normalization", "LayerNorm", "model_type")
    src.imply("add_bias_linear", True, "model_type")
    src.imply("layernorm_epsilon", 1e-5, "model_type (torch LayerNorm's default eps)")
    return src
