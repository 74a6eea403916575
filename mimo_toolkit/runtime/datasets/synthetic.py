"""The built-in synthetic dataset: deterministic per (seed, index), learnable from the media."""

from __future__ import annotations

from collections.abc import Collection

import torch

from ...config import AudioEncoder, JobConfig, VisionEncoder
from ...media_counts import synthetic_items
from .sample import BOS_ID, EOS_ID, Sample, make_sample


class SyntheticDataset:
    """Deterministic multimodal samples whose text can be learned from the media.

    Each sample has a class ``c``; its images carry ``c`` in their colour and pattern, its
    audio clips in the frequency band that is loud. The text after the placeholders is a
    sequence determined by ``c`` (a start token and a stride), so the loss falls as the model
    learns to read the class from the encoders. Vision samples have 1 or 2 images (varying
    shapes across micro-batches).
    """

    NUM_CLASSES = 8
    FIRST_TOKEN = 3
    VALID_SAMPLES = 256
    """Size of the synthetic validation split (the samples after the training ones)."""

    def __init__(self, job: JobConfig, num_samples: int | None = None, offset: int = 0) -> None:
        self.job = job
        self.num_samples = num_samples or job.data.num_samples
        self.offset = offset
        self.seq_length = job.train.seq_length
        self.vocab = job.language_model.vocab_size
        self.token_ids = job.layout.special_token_ids
        self.encoders = job.encoders

    def __len__(self) -> int:
        return self.num_samples

    def get(self, index: int, modalities: Collection[str]) -> Sample:
        gen = torch.Generator().manual_seed(self.job.train.seed * 1_000_003 + self.offset + index)
        cls = int(torch.randint(self.NUM_CLASSES, (1,), generator=gen))
        ids = [BOS_ID]
        media = {}
        for name, arch in self.encoders.items():
            items = synthetic_items(self.job, name, index)
            ids += [self.token_ids[name]] * (items * arch.tokens_per_sample)
            if name in modalities:
                media[name] = _synthetic_media(arch, cls, items, gen)
        span = self.vocab - self.FIRST_TOKEN
        start, stride = self.FIRST_TOKEN + (cls * 37) % span, 1 + cls % 5
        room = self.seq_length - len(ids) - 1
        text = [self.FIRST_TOKEN + (start - self.FIRST_TOKEN + k * stride) % span for k in range(max(room, 0))]
        return make_sample(ids, text + [EOS_ID], prompt_len=len(ids), media=media, sample_id=f"synthetic-{self.offset + index}")


def _synthetic_media(arch, cls: int, items: int, gen: torch.Generator) -> torch.Tensor:
    if isinstance(arch, VisionEncoder):
        size = arch.image_size
        base = torch.zeros(items, arch.num_channels, size, size)
        base[:, cls % arch.num_channels] = 1.0
        stripes = torch.arange(size).float().mul(2 * torch.pi * (1 + cls) / size).sin()
        base += 0.5 * stripes.view(1, 1, 1, size)
        return base + 0.1 * torch.randn(base.shape, generator=gen)
    assert isinstance(arch, AudioEncoder)
    mel = 0.1 * torch.randn(items, arch.num_mel_bins, arch.num_frames, generator=gen)
    band = (cls * arch.num_mel_bins) // SyntheticDataset.NUM_CLASSES
    mel[:, band : band + max(1, arch.num_mel_bins // 8)] += 1.0
    return mel
