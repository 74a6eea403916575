"""How each module replica gets its slice of a batch.

Batching rule (the same on every rank, so no rank needs to ask another what to load):
the optimizer step ``t`` consumes samples ``[t*G, (t+1)*G)`` of an epoch-wise shuffled
order; its global micro-batch ``g`` is ``M = micro_batch_size x llm.dp`` consecutive
samples, and a module with ``dp`` replicas gives replica ``r`` the contiguous slice
``[r*M/dp, (r+1)*M/dp)``. Ranks load only what their modules need: LLM ranks the text of
their slice, encoder ranks the media of theirs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from ...config import JobConfig
from .sample import PAD_ID, MimoDataset, Sample


def sample_index(position: int, length: int, seed: int) -> int:
    """Dataset index of the ``position``-th sample consumed (reshuffled every epoch)."""
    epoch, offset = divmod(position, length)
    return int(_epoch_order(length, seed, epoch)[offset])


@lru_cache(maxsize=2)
def _epoch_order(length: int, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's shuffle, drawn once (not once per sample)."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed + 7919 * epoch))


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

    def offsets(self, microbatch: int, replica: int, replicas: int) -> range:
        """Offsets within the step (``0 .. global_batch - 1``) of one replica's slice."""
        return self.positions(0, microbatch, replica, replicas)

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

    def pin_memory(self) -> "TextBatch":
        return TextBatch(self.input_ids.pin_memory(), self.labels.pin_memory(), self.loss_mask.pin_memory(),
                         self.placeholders)


@dataclass
class MediaBatch:
    """One encoder replica's slice of a micro-batch."""

    items: torch.Tensor  # [n_items, ...]
    tokens_per_sample: list[int]
    undecodable: list[int] = field(default_factory=list)
    """Samples of the slice (0-based) whose media failed to decode (zeros stand in)."""

    def pin_memory(self) -> "MediaBatch":
        return MediaBatch(self.items.pin_memory(), self.tokens_per_sample, self.undecodable)


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
        if not s.undecodable:  # a sample whose media failed to decode counts for nothing
            mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.float)
    placeholders = {name: (ids == tok).sum(dim=1).tolist() for name, tok in special_ids.items()}
    return TextBatch(ids, labels, mask, placeholders)


def collate_media(samples: Sequence[Sample], name: str, tokens_per_item: int) -> MediaBatch:
    items = [s.media[name] for s in samples]
    return MediaBatch(torch.cat(items, dim=0), [t.shape[0] * tokens_per_item for t in items],
                      [i for i, s in enumerate(samples) if s.undecodable])


@dataclass
class StepBatch:
    """Everything one rank's modules read in one step, per micro-batch."""

    texts: list[TextBatch] | None
    """The LLM replica's text slices (None on ranks without the LLM)."""
    media: dict[str, list[MediaBatch]]
    """Encoder module -> its replica's media slices."""
    undecodable: list[int] = field(default_factory=list)
    """Offsets in the step of the samples whose media this rank failed to decode."""

    def pin_memory(self) -> "StepBatch":
        """Page-locked copies (what DataLoader's ``pin_memory`` calls), for asynchronous copies to a GPU."""
        texts = [t.pin_memory() for t in self.texts] if self.texts is not None else None
        media = {m: [b.pin_memory() for b in batches] for m, batches in self.media.items()}
        return StepBatch(texts, media, self.undecodable)


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

    def step(self, step: int) -> StepBatch:
        """This rank's whole step: the LLM's texts and each encoder's media, per micro-batch."""
        mbs = range(self.geometry.num_microbatches)
        lm = self.job.layout.language_module
        texts = [self.text(step, mb) for mb in mbs] if lm in self.replica_of else None
        media = {m: [self.media(m, step, mb) for mb in mbs] for m in self.replica_of if m != lm}
        return StepBatch(texts, media, self._undecodable(media))

    def _undecodable(self, media: dict[str, list[MediaBatch]]) -> list[int]:
        """Step offsets of the samples whose media failed to decode here."""
        layout = self.job.layout
        return sorted({
            self.geometry.offsets(mb, self.replica_of[m], layout.module_parallelisms[m].dp)[i]
            for m, batches in media.items() for mb, batch in enumerate(batches) for i in batch.undecodable
        })


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
