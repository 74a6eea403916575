"""Samples, the dataset interface, and how each module replica gets its slice of a batch.

Batching rule (the same on every rank, so no rank needs to ask another what to load):
the optimizer step ``t`` consumes samples ``[t*G, (t+1)*G)`` of an epoch-wise shuffled
order; its global micro-batch ``g`` is ``M = micro_batch_size x llm.dp`` consecutive
samples, and a module with ``dp`` replicas gives replica ``r`` the contiguous slice
``[r*M/dp, (r+1)*M/dp)``. Ranks load only what their modules need: LLM ranks the text of
their slice, encoder ranks the media of theirs.

A dataset is anything with ``__len__`` and ``get(index, modalities) -> Sample``; the
built-in synthetic one is deterministic per (seed, index). Placeholder tokens (one per
encoder output embedding) are part of ``input_ids``; their loss mask is 0, as is padding's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import AudioEncoder, JobConfig, VisionEncoder

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


@dataclass
class Sample:
    """One training example: text with placeholders, targets, and media per encoder module."""

    input_ids: list[int]
    labels: list[int]
    """Target of each position (the next token); ignored where ``loss_mask`` is 0."""
    loss_mask: list[int]
    media: dict[str, torch.Tensor] = field(default_factory=dict)
    """Encoder module name -> items ``[n_items, ...]`` (images or log-mel clips)."""
    sample_id: str = ""


class MimoDataset(Protocol):
    def __len__(self) -> int: ...

    def get(self, index: int, modalities: Collection[str]) -> Sample:
        """Sample ``index`` with media for the named encoder modules only."""


# ---- the synthetic dataset ---------------------------------------------------------------


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

    MIN_TEXT = 8

    def _items(self, name: str, index: int) -> int:
        """1 or 2 images (alternating) when two fit in the sequence; 1 clip of audio."""
        if not isinstance(self.encoders[name], VisionEncoder) or index % 2 == 0:
            return 1
        placeholders = sum(a.tokens_per_sample for a in self.encoders.values())
        fits = placeholders + self.encoders[name].tokens_per_sample + self.MIN_TEXT + 2 <= self.seq_length
        return 2 if fits else 1

    def get(self, index: int, modalities: Collection[str]) -> Sample:
        gen = torch.Generator().manual_seed(self.job.train.seed * 1_000_003 + self.offset + index)
        cls = int(torch.randint(self.NUM_CLASSES, (1,), generator=gen))
        ids = [BOS_ID]
        media = {}
        for name, arch in self.encoders.items():
            items = self._items(name, index)
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


def make_sample(prompt: list[int], answer: list[int], prompt_len: int, media: dict, sample_id: str = "") -> Sample:
    """Input ``prompt + answer``, loss on predicting every answer token."""
    ids = prompt + answer
    labels = ids[1:] + [PAD_ID]
    mask = [1 if prompt_len - 1 <= i < len(ids) - 1 else 0 for i in range(len(ids))]
    return Sample(input_ids=ids, labels=labels, loss_mask=mask, media=media, sample_id=sample_id)


def build_dataset(job: JobConfig, split: str = "train") -> MimoDataset:
    """The ``split`` ("train" or "valid") of the dataset a job's ``data`` section names."""
    if job.data.source == "synthetic":
        if split == "train":
            return SyntheticDataset(job)
        return SyntheticDataset(job, SyntheticDataset.VALID_SAMPLES, offset=job.data.num_samples)
    from .datasets import build_file_dataset  # real data (Pillow, tokenizers) only when asked

    return build_file_dataset(job, split)


# ---- which samples a replica takes --------------------------------------------------------


def sample_index(position: int, length: int, seed: int) -> int:
    """Dataset index of the ``position``-th sample consumed (reshuffled every epoch)."""
    epoch, offset = divmod(position, length)
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    return int(order[offset])


@dataclass(frozen=True)
class BatchGeometry:
    """Sizes that fix which samples every module replica processes."""

    global_batch: int
    micro_batch: int
    """Samples per global micro-batch (micro_batch_size x llm.dp)."""

    @classmethod
    def of(cls, job: JobConfig) -> "BatchGeometry":
        return cls(job.train.global_batch_size, job.train.micro_batch_size * job.layout.language.dp)

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // self.micro_batch

    def positions(self, step: int, microbatch: int, replica: int, replicas: int) -> range:
        """Consumed-sample positions of one replica's slice of one micro-batch."""
        per = self.micro_batch // replicas
        start = step * self.global_batch + microbatch * self.micro_batch + replica * per
        return range(start, start + per)


# ---- collated batches ------------------------------------------------------------------------


@dataclass
class TextBatch:
    """One LLM replica's slice of a micro-batch, padded to the sequence length."""

    input_ids: torch.Tensor  # [b, s] with placeholder ids
    labels: torch.Tensor  # [b, s]
    loss_mask: torch.Tensor  # [b, s] float
    placeholders: dict[str, list[int]]
    """Encoder module -> placeholder tokens in each sample of the slice."""

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())


@dataclass
class MediaBatch:
    """One encoder replica's slice of a micro-batch."""

    items: torch.Tensor  # [n_items, ...]
    tokens_per_sample: list[int]


def collate_text(samples: Sequence[Sample], seq_length: int, special_ids: dict[str, int]) -> TextBatch:
    b = len(samples)
    ids = torch.full((b, seq_length), PAD_ID, dtype=torch.long)
    labels = torch.full((b, seq_length), PAD_ID, dtype=torch.long)
    mask = torch.zeros((b, seq_length))
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        if n > seq_length:
            raise ValueError(f"sample {s.sample_id}: {n} tokens exceed train.seq_length={seq_length}")
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels).clamp_min(0)
        mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.float)
    placeholders = {name: (ids == tok).sum(dim=1).tolist() for name, tok in special_ids.items()}
    return TextBatch(ids, labels, mask, placeholders)


def collate_media(samples: Sequence[Sample], name: str, tokens_per_item: int) -> MediaBatch:
    items = [s.media[name] for s in samples]
    return MediaBatch(torch.cat(items, dim=0), [t.shape[0] * tokens_per_item for t in items])


class ReplicaData:
    """What one rank loads: the slices of its modules' replicas, per micro-batch."""

    def __init__(self, dataset: MimoDataset, job: JobConfig, replica_of: dict[str, int]) -> None:
        self.dataset = dataset
        self.job = job
        self.geometry = BatchGeometry.of(job)
        self.replica_of = replica_of  # module -> this rank's dp coordinate in it
        self.seed = job.train.seed

    def _samples(self, module: str, step: int, microbatch: int, modalities: Collection[str]) -> list[Sample]:
        dp = self.job.layout.module_parallelisms[module].dp
        positions = self.geometry.positions(step, microbatch, self.replica_of[module], dp)
        return [self._load(p, modalities) for p in positions]

    def _load(self, position: int, modalities: Collection[str]) -> Sample:
        return self.dataset.get(sample_index(position, len(self.dataset), self.seed), modalities)

    def text(self, step: int, microbatch: int) -> TextBatch:
        lm = self.job.layout.language_module
        samples = self._samples(lm, step, microbatch, ())
        return collate_text(samples, self.job.train.seq_length, self.job.layout.special_token_ids)

    def media(self, module: str, step: int, microbatch: int) -> MediaBatch:
        samples = self._samples(module, step, microbatch, (module,))
        return collate_media(samples, module, self.job.model[module].tokens_per_sample)


class ValidationData(ReplicaData):
    """The validation split in file order, each sample once.

    Validation step ``k`` takes positions ``[k*G, (k+1)*G)`` like a training step, so the
    micro-batch geometry (and the bridge's shapes) stay those of training; positions past
    the end wrap around with loss mask 0, so they count for nothing.
    """

    @property
    def steps(self) -> int:
        return -(-len(self.dataset) // self.geometry.global_batch)

    def _load(self, position: int, modalities: Collection[str]) -> Sample:
        n = len(self.dataset)
        sample = self.dataset.get(position % n, modalities)
        if position >= n:
            sample.loss_mask = [0] * len(sample.loss_mask)
        return sample
