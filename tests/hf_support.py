"""Tiny random Hugging Face models for the tests (``scripts/make_tiny_hf.py`` builds them) and
the runtime's batches in transformers' terms: the oracle the parity tests compare with."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from make_tiny_hf import IMAGE_TOKEN_INDEX, make_clip, make_llama, make_llava, make_whisper, randomize  # noqa: E402

__all__ = ["IMAGE_TOKEN_INDEX", "hf_input_ids", "make_clip", "make_llama", "make_llava", "make_whisper", "randomize"]


def hf_input_ids(input_ids: torch.Tensor, special: dict[str, int], image_token: int = IMAGE_TOKEN_INDEX) -> torch.Tensor:
    """The runtime's ids with its image placeholders replaced by LLaVA's image token."""
    ids = input_ids.clone()
    ids[ids == special["vision"]] = image_token
    return ids
