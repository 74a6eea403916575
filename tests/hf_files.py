"""Hugging Face checkpoint directories written by hand, without torch: config.json and
safetensors files of zeros with exactly the names and shapes a test asks for. The fast
render-time tests use them; the parity tests use real models (``hf_support``)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

DTYPE_BYTES = {"F32": 4, "BF16": 2}


def write_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], dtype: str = "F32") -> None:
    """Zeros; the data section is a sparse hole, so a 7B-shaped file takes no disk space."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = DTYPE_BYTES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
}


def llama_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a LlamaForCausalLM checkpoint, written out by hand."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
        })
    return out


def write_llama(path: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    config = {**LLAMA_CONFIG, **(config or {})}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    write_safetensors(path / "model.safetensors", llama_tensors(config) if tensors is None else tensors)
    return path


def write_tokenizer(path: Path, vocab: int = 300, chat_template: str | None = None) -> Path:
    """A WordLevel tokenizer.json with ``vocab`` ids and a tokenizer_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    words = {f"w{i}": i for i in range(vocab)}
    words.update({"<s>": 1, "</s>": 2, "<unk>": 0})
    tokenizer = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
                 "post_processor": None, "decoder": None,
                 "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"}}
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "unk_token": "<unk>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


# ---- the stage presets' checkpoints, shaped as on the hub (sparse files, no weights) ---------

VICUNA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "max_position_embeddings": 4096, "num_attention_heads": 32,
             "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": None,
             "tie_word_embeddings": False, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2,
             "pad_token_id": 0, "hidden_act": "silu", "torch_dtype": "float16"}
CLIP_L336_VISION = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "num_attention_heads": 16,
                    "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model"}
#: llava-hf/llava-1.5-7b-hf's config.json: text_config names only what differs from LlamaConfig
LLAVA_15 = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "ignore_index": -100,
            "image_token_index": 32000, "pad_token_id": 32001, "projector_hidden_act": "gelu",
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
            "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
                            "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
            "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                              "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                              "patch_size": 14, "projection_dim": 768, "vocab_size": 32000}}


def clip_tensors(prefix: str, layers: int = 24, h: int = 1024, f: int = 4096) -> dict:
    out = {prefix + "embeddings.class_embedding": (h,), prefix + "embeddings.patch_embedding.weight": (h, 3, 14, 14),
           prefix + "embeddings.position_embedding.weight": (577, h), prefix + "pre_layrnorm.weight": (h,),
           prefix + "pre_layrnorm.bias": (h,), prefix + "post_layernorm.weight": (h,), prefix + "post_layernorm.bias": (h,)}
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            out.update({p + n + ".weight": (h,), p + n + ".bias": (h,)})
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out.update({p + "self_attn." + n + ".weight": (h, h), p + "self_attn." + n + ".bias": (h,)})
        out.update({p + "mlp.fc1.weight": (f, h), p + "mlp.fc1.bias": (f,), p + "mlp.fc2.weight": (h, f), p + "mlp.fc2.bias": (h,)})
    return out


def write_hub_checkpoints(root: Path) -> Path:
    """clip-vit-large-patch14-336 (CLIPModel), vicuna-7b-v1.5 (two shards) and llava-1.5-7b-hf."""
    clip = root / "clip-vit-large-patch14-336"
    clip.mkdir(parents=True)
    (clip / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip",
                                                  "vision_config": CLIP_L336_VISION, "text_config": {}}))
    write_safetensors(clip / "model.safetensors", {
        **clip_tensors("vision_model."), "text_model.embeddings.token_embedding.weight": (49408, 768),
        "text_model.final_layer_norm.weight": (768,), "visual_projection.weight": (768, 1024),
        "text_projection.weight": (768, 768), "logit_scale": ()}, dtype="F32")
    vicuna = root / "vicuna-7b-v1.5"
    vicuna.mkdir()
    (vicuna / "config.json").write_text(json.dumps(VICUNA_7B))
    tensors = llama_tensors(VICUNA_7B)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:150], "model-00002-of-00002.safetensors": names[150:]}
    for file, part in shards.items():
        write_safetensors(vicuna / file, {n: tensors[n] for n in part}, dtype="BF16")
    weight_map = {n: file for file, part in shards.items() for n in part}
    (vicuna / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    llava = root / "llava-1.5-7b-hf"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps(LLAVA_15))
    text = {**VICUNA_7B, "vocab_size": 32064}
    lm = {("language_model." + k if k.startswith("model.") else "language_model." + k): v for k, v in llama_tensors(text).items()}
    projector = {"multi_modal_projector.linear_1.weight": (4096, 1024), "multi_modal_projector.linear_1.bias": (4096,),
                 "multi_modal_projector.linear_2.weight": (4096, 4096), "multi_modal_projector.linear_2.bias": (4096,)}
    write_safetensors(llava / "model.safetensors", {**lm, **clip_tensors("vision_tower.vision_model."), **projector}, "BF16")
    write_tokenizer(vicuna, vocab=32000)
    write_tokenizer(llava, vocab=32002)  # + <image>, <pad>
    return root
