"""Hugging Face checkpoint directories written by hand, without torch: config.json and
safetensors files of zeros with exactly the names and shapes a test asks for. The fast
render-time tests use them; the parity tests use real models (``hf_support``)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

DTYPE_BYTES = {"F32": 4, "BF16": 2}


def write_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], dtype: str = "F32") -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = DTYPE_BYTES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


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
