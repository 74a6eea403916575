"""LLaVA-style record files (``data.path``, ``data.valid_path``): how they are read.

One reader for the job's dataset (``runtime/datasets/llava_json.py``) and the render-time
checks (``mimo_toolkit.validation.files``), so both agree on what a file holds: a ``.jsonl``
file is JSON Lines (one record per line; a line that is not JSON is a bad sample, reported
with its line number), any other file one JSON list of records. Plain Python (no torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


class DataFileError(UserError):
    """A data file that cannot be read as records (the message names the file)."""


def is_json_lines(path: str | Path) -> bool:
    return Path(path).suffix == ".jsonl"


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(sample id, raw record) pairs of a JSON list or a JSON Lines file. A JSON Lines line
    that does not parse is yielded as its ``json.JSONDecodeError`` (a bad sample)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    if is_json_lines(path):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raw = exc  # reported as a bad sample, keeping the line number as its id
            yield sample_id(raw, f"{path.name}:{number}"), raw
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); JSON Lines files end in .jsonl") from None
    if not isinstance(records, list):
        raise DataFileError(f"{path}: expected a JSON list of records")
    for number, raw in enumerate(records):
        yield sample_id(raw, f"{path.name}[{number}]"), raw


def sample_id(raw: Any, fallback: str) -> str:
    return str(raw["id"]) if isinstance(raw, dict) and "id" in raw else fallback


def first_character(path: str | Path, limit: int = 1 << 16) -> str:
    """The first non-blank character of a file (a cheap look at a file too big to parse)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(limit).lstrip("\ufeff \t\r\n")[:1]
