"""How many media items (images, audio clips) one sample hands an encoder. Plain Python.

The synthetic dataset's rule lives here, not in ``runtime/datasets/synthetic.py``, because
the planner's memory model needs it too and must not import torch: an encoder's activations
grow with the items of a micro-batch, and a micro-batch of two-image samples holds twice
the activations of a one-image one (``planner/memory.py`` sizes for the largest).
"""

from __future__ import annotations

from .config import JobConfig, VisionEncoder

#: The text a synthetic sample keeps at least, besides its placeholders, BOS and EOS.
SYNTHETIC_MIN_TEXT = 8


def synthetic_items(job: JobConfig, name: str, index: int) -> int:
    """Items of encoder ``name`` in synthetic sample ``index``: vision samples alternate 1
    and 2 images (varying shapes across micro-batches) when two fit in the sequence; audio
    always 1 clip."""
    encoders = job.encoders
    if not isinstance(encoders[name], VisionEncoder) or index % 2 == 0:
        return 1
    placeholders = sum(a.tokens_per_sample for a in encoders.values())
    fits = placeholders + encoders[name].tokens_per_sample + SYNTHETIC_MIN_TEXT + 2 <= job.train.seq_length
    return 2 if fits else 1


def max_items_per_sample(job: JobConfig, name: str) -> int:
    """The most items of encoder ``name`` one sample carries. For LLaVA records the usual one
    per encoder is assumed: the planner does not read data files, and records listing
    several images per sample (``runtime/datasets/llava_json.py`` accepts them) need more
    activation memory than it predicts."""
    if job.data.source == "synthetic":
        return max(synthetic_items(job, name, index) for index in (0, 1))
    return 1
