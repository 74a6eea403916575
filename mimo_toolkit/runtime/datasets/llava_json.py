"""LLaVA-style conversations in JSON or JSONL, with images and audio clips.

A record (LLaVA's format; ``audio`` and ``category`` are this toolkit's additions)::

    {"id": "42", "image": "images/42.png", "audio": "audio/42.wav", "category": "color",
     "conversations": [{"from": "human", "value": "<image>\\nWhat color is the shape?"},
                       {"from": "gpt", "value": "red"}]}

``image``/``audio`` is a path or a list of paths (relative to ``data.media_root``, default
the JSON file's directory), one per ``<image>``/``<audio>`` tag in the human turns.

Bad samples are found once, when the dataset is built, by checks that every rank runs on
the same files with the same result: the text (roles, tags, length after the chat template)
and each media file's header (an image must open and verify, a WAV must parse). Every rank
therefore keeps the same list of good samples, and the sampler shuffles that list, so
ranks that load the same sample never disagree about it. ``data.on_bad_sample=stop`` turns
any bad sample into an error naming it. A file that passes the header check but fails to
decode later (a truncated JPEG) stops the run under ``stop``; under ``skip`` zeros stand in
for its media (so every tensor keeps its shape), the sample is marked ``undecodable``, a
warning names it, and the step drops it from the loss on every rank
(``undecodable.py``): nothing trains on the zeros.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...config import JobConfig, VisionEncoder
from ...datafiles import DataFileError, read_records
from ...hf.preprocessing import ImagePreprocessing, preprocessing_of
from . import media as media_io
from .chat import Placeholder, make_template
from .sample import PAD_ID, Sample
from .tokenizers import Tokenizer

#: encoder kind -> (record key, tag in the text)
MEDIA_KEYS = {"vision": ("image", "<image>"), "audio": ("audio", "<audio>")}
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class DataError(DataFileError):
    """A dataset that cannot be used as configured (names the file or sample to fix)."""


class BadSample(ValueError):
    """One record that cannot be trained on (the message says why)."""


@dataclass
class Record:
    sample_id: str
    turns: list[tuple[str, str]]
    """(human, gpt) pairs."""
    media: dict[str, list[str]] = field(default_factory=dict)
    """Encoder module -> file paths, one per tag."""
    category: str | None = None


class LlavaDataset:
    """Good records of a LLaVA-style file; ``get`` tokenizes and loads media on demand."""

    def __init__(self, path: str, job: JobConfig, tokenizer: Tokenizer, media_root: str | None = None,
                 on_bad_sample: str = "skip") -> None:
        self.path = Path(path)
        self.root = Path(media_root) if media_root else self.path.parent
        self.seq_length = job.train.seq_length
        self.on_bad_sample = on_bad_sample
        self.tokenizer = tokenizer
        self.encoders = job.encoders
        self.module_of_kind = _modules_by_kind(self.encoders)
        self.template = make_template(tokenizer, [
            Placeholder(MEDIA_KEYS[arch.KIND][1], job.layout.special_token_ids[name], arch.tokens_per_sample)
            for name, arch in self.encoders.items()
        ], job.data.tokenizer)
        tokenizer_dir = job.data.tokenizer if Path(job.data.tokenizer).is_dir() else None
        self.preprocessing = {name: preprocessing_of(arch, [arch.pretrained, tokenizer_dir])
                              for name, arch in self.encoders.items()}
        self.records: list[Record] = []
        self.bad: list[tuple[str, str]] = []
        for sample_id, raw in read_records(self.path):
            try:
                record = self._parse(sample_id, raw)
                self._text(record)
                self._check_media(record)
            except BadSample as exc:
                self.bad.append((sample_id, str(exc)))
                continue
            self.records.append(record)
        if self.bad and on_bad_sample == "stop":
            raise DataError(f"{self.path}: {self.bad_report()} (data.on_bad_sample=stop; use skip to leave them out)")
        if not self.records:
            raise DataError(f"{self.path}: no usable samples ({self.bad_report() or 'the file is empty'})")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def bad_samples(self) -> int:
        return len(self.bad)

    def bad_report(self, limit: int = 5) -> str:
        if not self.bad:
            return ""
        shown = "; ".join(f"sample {sid}: {why}" for sid, why in self.bad[:limit])
        more = f"; and {len(self.bad) - limit} more" if len(self.bad) > limit else ""
        return f"{len(self.bad)} bad sample(s): {shown}{more}"

    # ---- parsing and checks (run once, identically on every rank) ----------------------------
    def _parse(self, sample_id: str, raw) -> Record:
        if isinstance(raw, json.JSONDecodeError):
            raise BadSample(f"not JSON ({raw.msg})")
        if not isinstance(raw, dict) or not isinstance(raw.get("conversations"), list):
            raise BadSample("not an object with a 'conversations' list")
        roles, texts = [], []
        for turn in raw["conversations"]:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise BadSample("a turn without a string 'value'")
            roles.append(_ROLES.get(turn.get("from"), turn.get("from")))
            texts.append(turn["value"])
        if not roles or len(roles) % 2 or any(r != ("human", "gpt")[i % 2] for i, r in enumerate(roles)):
            raise BadSample(f"turns must alternate human, gpt, ... and end with gpt (got {roles})")
        record = Record(sample_id, list(zip(texts[0::2], texts[1::2])), category=raw.get("category"))
        for kind, (key, tag) in MEDIA_KEYS.items():
            paths = raw.get(key) or []
            paths = [paths] if isinstance(paths, str) else paths
            tags = sum(h.count(tag) for h, _ in record.turns)
            if any(tag in g for _, g in record.turns):
                raise BadSample(f"{tag} in an assistant turn")
            if (paths or tags) and kind not in self.module_of_kind:
                raise BadSample(f"has {key} data but the model has no {kind} encoder")
            if paths and not tags:
                raise BadSample(f"no {tag} placeholder in the text for its {key}")
            if tags != len(paths):
                raise BadSample(f"{tags} {tag} placeholder(s) but {len(paths)} {key} file(s)")
            if paths:
                record.media[self.module_of_kind[kind]] = [str(self.root / p) for p in paths]
        return record

    def _text(self, record: Record) -> tuple[list[int], list[int], list[int]]:
        """input ids, labels and loss mask, cut to ``train.seq_length`` (never through media)."""
        enc = self.template.encode(record.turns)
        ids = enc.ids
        labels = ids[1:] + [PAD_ID]
        mask = [int(t) for t in enc.target[1:]] + [0]
        n = self.seq_length
        if len(ids) > n:
            if any(t < 0 for t in ids[n:]):
                raise BadSample(f"too long: {len(ids)} tokens, and train.seq_length={n} would cut through media placeholders")
            ids, labels, mask = ids[:n], labels[:n], mask[:n]
            if not any(mask):
                raise BadSample(f"too long: no answer token within train.seq_length={n}")
        return ids, labels, mask

    def _check_media(self, record: Record) -> None:
        for module, paths in record.media.items():
            check = media_io.check_image if self.encoders[module].KIND == "vision" else media_io.check_wav
            for path in paths:
                if not os.path.isfile(path):
                    raise BadSample(f"missing file {path}")
                try:
                    check(path)
                except Exception as exc:  # noqa: BLE001 - any decoder error makes the sample bad
                    raise BadSample(f"unreadable file {path} ({type(exc).__name__}: {exc})") from None

    # ---- loading -------------------------------------------------------------------------------
    def get(self, index: int, modalities: Collection[str]) -> Sample:
        record = self.records[index]
        ids, labels, mask = self._text(record)
        sample = Sample(ids, labels, mask, {}, record.sample_id)
        for name in modalities:
            if name in self.encoders:
                sample.media[name], failed = self.load_media(record, name)
                sample.undecodable |= failed
        return sample

    def load_media(self, record: Record, module: str) -> tuple[torch.Tensor, bool]:
        """``[items, ...]`` inputs of one encoder module (zero items for a sample without
        them), and whether a file failed to decode (zeros stand in for it)."""
        arch = self.encoders[module]
        shape = _item_shape(arch)
        items, failed = [], False
        for path in record.media.get(module, []):
            try:
                items.append(_load(self.preprocessing[module], path))
            except Exception as exc:  # noqa: BLE001
                if self.on_bad_sample == "stop":
                    raise DataError(f"sample {record.sample_id}: cannot decode {path} ({exc})") from exc
                print(f"[mimo-toolkit] warning: sample {record.sample_id}: cannot decode {path} ({exc}); "
                      f"dropped from the loss", file=sys.stderr, flush=True)
                items.append(torch.zeros(shape))
                failed = True
        return (torch.stack(items) if items else torch.zeros(0, *shape)), failed


def _modules_by_kind(encoders: dict) -> dict[str, str]:
    """Encoder kind -> module name (``mimo_toolkit.validation`` made sure a tag such as
    ``<image>`` names exactly one encoder, and images are RGB)."""
    return {arch.KIND: name for name, arch in encoders.items()}


def _item_shape(arch) -> tuple[int, ...]:
    if isinstance(arch, VisionEncoder):
        return (3, arch.image_size, arch.image_size)
    return (arch.num_mel_bins, arch.num_frames)


def _load(pre, path: str) -> torch.Tensor:
    if isinstance(pre, ImagePreprocessing):
        return media_io.load_image(path, pre)
    return media_io.load_audio_features(path, pre)
