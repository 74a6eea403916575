"""Media files for data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: its header opens and verifies, its pixels fail to decode."""
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path
