#!/usr/bin/env python3
"""Tiny random Hugging Face checkpoints, built locally with transformers (nothing downloaded).

Their shapes match the tiny presets, so they import with a few ``--set``s (docs/weights.md):

    python3 scripts/make_tiny_hf.py --out tiny-hf
    mimo-toolkit show llava --preset tiny --set model.vision.pretrained=tiny-hf/llava \
        --set model.llm.pretrained=tiny-hf/llava --set model.vision.num_layers=3

writes ``llava`` (CLIP with 3 layers, features of the 2nd, + Llama with GQA), ``llama``,
``clip`` and ``whisper`` (multi_encoder's tiny shapes). Every parameter, norms and biases
included, is redrawn at random, so a mapping that swaps two norms or drops a bias shows in
the parity tests that use them (tests/test_hf_parity.py). Needs the ``hf`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

#: the tiny LLaVA's image placeholder id (unused by the byte tokenizer: ids 3-258)
IMAGE_TOKEN_INDEX = 300


def randomize(model: torch.nn.Module, seed: int, std: float = 0.08) -> None:
    """Redraw every parameter: norms ~ 1 + N(0, 0.1), biases ~ N(0, 0.1), the rest ~ N(0, std)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or "layrnorm" in name):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias") or p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)


def llama_config(vocab_size: int = 320, **overrides):
    from transformers import LlamaConfig

    fields = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=128, rms_norm_eps=1e-5)
    return LlamaConfig(**{**fields, **overrides})


def clip_config(layers: int = 3, **overrides):
    from transformers import CLIPVisionConfig

    fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=32, patch_size=8, hidden_act="quick_gelu", projection_dim=32)
    return CLIPVisionConfig(**{**fields, **overrides})


def make_llava(path: Path, seed: int = 0, text_config: dict | None = None, **overrides) -> Path:
    """A tiny LLaVA: CLIP (3 layers, features of the 2nd: vision_feature_layer=-2) + Llama with GQA
    (``text_config``: changes to the Llama config, e.g. tied embeddings and llama3 RoPE)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = llama_config(**(text_config or {}))
    config = LlavaConfig(vision_config=clip_config(), text_config=text, image_token_index=IMAGE_TOKEN_INDEX,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", **overrides)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    randomize(model, seed)
    model.save_pretrained(path)
    return path


def make_llama(path: Path, seed: int = 0, **overrides) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**overrides))
    randomize(model, seed)
    model.save_pretrained(path)
    return path


def make_clip(path: Path, seed: int = 0, layers: int = 2) -> Path:
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(clip_config(layers))
    randomize(model, seed)
    model.save_pretrained(path)
    return path


def make_whisper(path: Path, seed: int = 0) -> Path:
    """A tiny Whisper matching ``multi_encoder``'s tiny audio encoder (16 mels x 32 frames)."""
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=16,
                           max_source_positions=16, vocab_size=64, max_target_positions=16, pad_token_id=1,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, begin_suppress_tokens=None)
    torch.manual_seed(seed)
    model = WhisperModel(config)
    randomize(model, seed)
    model.save_pretrained(path)
    return path




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write llava/, llama/, clip/ and whisper/ into")
    args = parser.parse_args()
    out = Path(args.out)
    for name, make in (("llava", make_llava), ("llama", make_llama), ("clip", make_clip), ("whisper", make_whisper)):
        make(out / name)
        print(out / name)


if __name__ == "__main__":
    main()
