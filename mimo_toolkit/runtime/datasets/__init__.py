"""Datasets from files users already have (``data.source=llava``).

``mimo_toolkit.runtime.data.build_dataset`` imports this package only for file sources, so
synthetic runs never import Pillow or tokenizers.
"""

from __future__ import annotations

from ...config import JobConfig
from ...errors import UserError
from .llava_json import DataError, LlavaDataset
from .tokenizers import load_tokenizer

SPLIT_FIELDS = {"train": "path", "valid": "valid_path"}


def build_file_dataset(job: JobConfig, split: str = "train", path: str | None = None) -> LlavaDataset:
    """The ``split`` ("train" or "valid") of the job's data section, or the file ``path``."""
    field = SPLIT_FIELDS[split]
    path = path or getattr(job.data, field)
    if not path:
        raise UserError(f"data.{field} is required with data.source={job.data.source}")
    tokenizer = load_tokenizer(job.data.tokenizer, job.language_model.vocab_size)
    return LlavaDataset(path, job, tokenizer, media_root=job.data.media_root, on_bad_sample=job.data.on_bad_sample)


__all__ = ["DataError", "LlavaDataset", "build_file_dataset", "load_tokenizer"]
