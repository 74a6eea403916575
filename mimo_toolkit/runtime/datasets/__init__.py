"""Where samples come from: the synthetic dataset and files users already have
(``data.source=llava``), and the per-replica batching both feed.

:func:`build_dataset` imports the file readers only for file sources, so synthetic runs never
import Pillow or tokenizers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import JobConfig
from ...errors import UserError
from .sample import MimoDataset
from .synthetic import SyntheticDataset

if TYPE_CHECKING:  # pragma: no cover
    from .llava_json import LlavaDataset

SPLIT_FIELDS = {"train": "path", "valid": "valid_path"}


def build_dataset(job: JobConfig, split: str = "train") -> MimoDataset:
    """The ``split`` ("train" or "valid") of the dataset a job's ``data`` section names."""
    if job.data.source == "synthetic":
        if split == "train":
            return SyntheticDataset(job)
        return SyntheticDataset(job, SyntheticDataset.VALID_SAMPLES, offset=job.data.num_samples)
    return build_file_dataset(job, split)


def build_file_dataset(job: JobConfig, split: str = "train", path: str | None = None) -> "LlavaDataset":
    """The ``split`` ("train" or "valid") of the job's data section, or the file ``path``."""
    field = SPLIT_FIELDS[split]
    path = path or getattr(job.data, field)
    if not path:
        raise UserError(f"data.{field} is required with data.source={job.data.source}")
    from .llava_json import LlavaDataset  # real data (Pillow, tokenizers) only when asked
    from .tokenizers import load_tokenizer

    tokenizer = load_tokenizer(job.data.tokenizer, job.language_model.vocab_size)
    return LlavaDataset(path, job, tokenizer, media_root=job.data.media_root, on_bad_sample=job.data.on_bad_sample)


__all__ = ["MimoDataset", "SyntheticDataset", "build_dataset", "build_file_dataset"]
