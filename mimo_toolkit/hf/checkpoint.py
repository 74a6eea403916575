"""A local Hugging Face checkpoint directory, read without torch.

A directory holds ``config.json`` and the weights as one ``model.safetensors`` or several
files listed by ``model.safetensors.index.json``. A safetensors file starts with an 8-byte
little-endian header length and a JSON header mapping each tensor name to its dtype, shape
and ``[start, end)`` byte offsets in the data section that follows; that header is all the
render-time checks read (a few kilobytes, even for a 7B model). The runtime reads the
tensors themselves, slice by slice, from the same files.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

#: bytes per element of each safetensors dtype
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 2**20  # the format's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype (safetensors name, e.g. ``BF16``), shape, bytes."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    """Absolute byte offset of the tensor's first element in ``file``."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> :class:`TensorInfo` of one safetensors file (header only)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise UserError(f"{path}: not a safetensors file (header length {length} bytes)")
            header = f.read(length)
            size = f.seek(0, 2)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        entries = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a safetensors file (its header is not JSON)") from None
    data_start = 8 + length
    out = {}
    for name, entry in entries.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor_info(path, name, entry, data_start, size)
    return out


def _tensor_info(path: Path, name: str, entry: dict, data_start: int, size: int) -> TensorInfo:
    try:
        dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: tensor {name!r} has a malformed header entry") from None
    if dtype not in DTYPE_BYTES:
        raise UserError(f"{path}: tensor {name!r} has dtype {dtype}, which the import does not read")
    info = TensorInfo(path, dtype, shape, data_start + start)
    if end - start != info.nbytes or data_start + end > size:
        raise UserError(
            f"{path}: tensor {name!r} {dtype}{list(shape)} needs {info.nbytes} bytes, the header gives "
            f"{end - start} at offset {start} of a {size - data_start}-byte data section (truncated file?)"
        )
    return info


@dataclass
class HFCheckpoint:
    """``config.json`` and the tensor index of a checkpoint directory."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]

    @classmethod
    def open(cls, directory: str, field: str) -> "HFCheckpoint":
        """Read a checkpoint directory; ``field`` (e.g. ``model.llm.pretrained``) names it in errors."""
        path = Path(directory)
        if not path.is_dir():
            raise UserError(f"{field}={directory}: no such directory (a local Hugging Face checkpoint)")
        config = read_json(path / CONFIG, f"{field}={directory}")
        return cls(path, config, _tensor_index(path, field))

    @property
    def architecture(self) -> str:
        names = self.config.get("architectures") or []
        return names[0] if names else ""


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{what}: no {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _tensor_index(path: Path, field: str) -> dict[str, TensorInfo]:
    """Every tensor of the directory's safetensors file(s)."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, field).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no 'weight_map'")
        out: dict[str, TensorInfo] = {}
        for file in sorted(set(weight_map.values())):
            out.update(read_header(path / file))
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise UserError(f"{index}: {len(missing)} tensor(s) of its weight_map are in no file: {', '.join(missing[:5])}")
        return out
    if (path / SINGLE_FILE).is_file():
        return read_header(path / SINGLE_FILE)
    found = sorted(p.name for p in path.glob("*.safetensors"))
    if len(found) == 1:
        return read_header(path / found[0])
    hint = " (*.bin checkpoints: convert them to safetensors first)" if list(path.glob("*.bin")) else ""
    raise UserError(f"{field}={path}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
