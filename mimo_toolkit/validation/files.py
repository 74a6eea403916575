"""The files a job reads (data, tokenizer, media root), checked where they can be.

A job that runs on this machine (``--scheduler local``, or TorchX's ``local_cwd``) reads
them here: a missing file or one that holds no records is an error before anything is
written. A job that runs elsewhere reads them on the compute nodes: a file missing here is a
warning (it must exist there), and one that exists here is sniffed, not parsed (it may be
large, and this may be a login node).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import JobConfig
from ..datafiles import DataFileError, first_character, is_json_lines, read_records
from ..errors import UserError


def check_data_files(job: JobConfig, on_this_machine: bool) -> list[str]:
    """Raise for a file that cannot work; return warnings (one line each) for files that
    must exist on the compute nodes but are not here."""
    data = job.data
    if data.source != "llava":
        return []
    warnings: list[str] = []

    def present(key: str, path: str, directory: bool = False) -> bool:
        if (Path(path).is_dir() if directory else Path(path).is_file()):
            return True
        kind = "directory" if directory else "file"
        if on_this_machine:
            raise UserError(f"{key}={path}: no such {kind} (the job runs on this machine)")
        warnings.append(f"{key}={path}: no such {kind} here; it must exist on the compute nodes")
        return False

    for key in ("path", "valid_path"):
        path = getattr(data, key)
        if path is not None and present(f"data.{key}", path):
            problem = _records_problem(path) if on_this_machine else _sniff_problem(path)
            if problem:
                raise UserError(f"data.{key}={path}: {problem}")
    tokenizer_dir = Path(data.tokenizer).is_dir()  # a checkpoint directory (tokenizer.json inside)
    if data.tokenizer != "byte" and present("data.tokenizer", data.tokenizer, tokenizer_dir) and on_this_machine:
        problem = _tokenizer_problem(data.tokenizer)
        if problem:
            raise UserError(f"data.tokenizer={data.tokenizer}: {problem}")
    if data.media_root is not None:
        present("data.media_root", data.media_root, directory=True)
    return warnings


def _records_problem(path: str) -> str | None:
    """Why the file holds no records the job can read, or None."""
    try:
        for _, raw in read_records(path):
            if isinstance(raw, dict):
                return None
    except DataFileError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read ({exc})"
    form = "JSON Lines" if is_json_lines(path) else "a JSON list"
    return f"holds no records ({form} of objects, each a LLaVA-style sample)"


def _sniff_problem(path: str) -> str | None:
    try:
        first = first_character(path)
    except OSError as exc:
        return f"cannot be read ({exc})"
    expected = "{" if is_json_lines(path) else "["
    if first != expected:
        form = "JSON Lines (one object per line)" if expected == "{" else "a JSON list of records"
        return f"expected {form}; the file starts with {first!r}"
    return None


def _tokenizer_problem(path: str) -> str | None:
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not a Hugging Face tokenizer.json ({exc})"
    if not isinstance(data, dict) or "model" not in data:
        return "not a Hugging Face tokenizer.json (no 'model' section)"
    return None
