"""Pretrained Hugging Face weights into this rank's part of a module, slice by slice.

Called by the provider's ``initialize_weights`` for every module with
``model.<module>.pretrained``. Each parameter this rank holds is matched to its rule in
:mod:`mimo_toolkit.hf.mapping` by its canonical name (global layer numbers, so a pipeline
stage finds its own layers), and ONLY the rows or columns of its tensor-parallel shard are
read from the memory-mapped safetensors files (:class:`SliceReader`): a rank never holds a
full copy of a sharded tensor, and peak memory grows by about the shard itself.

The slice of a parameter follows from megatron-core's own attributes on it
(``tensor_model_parallel``, ``partition_dim``): column-parallel weights (``linear_qkv``,
``linear_fc1``, embeddings, output layer, projector ``linear_fc1``) take rows, row-parallel
ones (``linear_proj``, ``linear_fc2``) columns; everything else is replicated.

The copies (bf16 from the mapped files into fresh fp32 parameters) are memory-bound and run
on the rank's share of the node's CPUs (:mod:`..parallel.cpu_threads`), not on the one
thread a GPU job's rank trains with; where that share is one thread, each parameter's fresh
pages are mapped in one call first (:class:`PageFaulter`).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import sys
import warnings
from pathlib import Path

import torch

from ...hf.mapping import Rule, te_name
from ...hf.pretrained import ModuleImport
from ..parallel.cpu_threads import at_least_threads, rank_cpu_share
from .init import canonical_names


#: safetensors dtype name -> torch dtype
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


class SliceReader:
    """Row/column ranges of the checkpoint's tensors: views of the memory-mapped files.

    Each file is mapped once, read-only; a tensor is a view of its bytes (the offsets
    :mod:`mimo_toolkit.hf.checkpoint` read from the header), so a row or column slice costs
    nothing until the copy into the parameter reads it, on every thread of the copy. A mapped
    page the process has touched counts as its memory while it stays mapped, so
    :meth:`release` drops the pages read so far (they stay in the page cache) after each
    parameter: at most one parameter's source is resident at a time."""

    def __init__(self, imp: ModuleImport) -> None:
        self.module = imp.module
        self.tensors = imp.source.checkpoint.tensors
        self._maps: dict[Path, mmap.mmap] = {}
        self._read: list[tuple[mmap.mmap, int, int]] = []  # byte ranges viewed since the last release

    def _tensor(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=TORCH_DTYPES[info.dtype])
        mapped = self._maps.get(info.file)
        if mapped is None:
            with open(info.file, "rb") as f:
                mapped = self._maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with warnings.catch_warnings():  # read-only by construction: only ever a copy source
            warnings.filterwarnings("ignore", "The given buffer is not writable")
            flat = torch.frombuffer(mapped, dtype=TORCH_DTYPES[info.dtype], count=info.numel, offset=info.offset)
        self._read.append((mapped, info.offset, info.offset + info.nbytes))
        return flat.view(info.shape)

    def full(self, name: str) -> torch.Tensor:
        return self._tensor(name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._tensor(name)[start:stop]

    def cols(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._tensor(name)[:, start:stop]

    def release(self) -> None:
        """Unmap the pages read since the last call from this process (``MADV_DONTNEED``)."""
        for mapped, start, stop in self._read:
            aligned = start - start % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_DONTNEED, aligned, stop - aligned)
        self._read.clear()

    def close(self) -> None:
        self.release()
        for mapped in self._maps.values():
            with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
                mapped.close()
        self._maps.clear()


class PageFaulter:
    """Map a fresh parameter's pages in one call before a one-thread copy writes them.

    A parameter the import fills is new memory: the copy's first write to each 4 KiB page
    traps into the kernel, which zeroes and maps it, and on this project's 2-core VM that was
    most of the import. ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+) maps the whole range in
    one call without the traps: a TP2 rank's import of the 1.14B benchmark checkpoint ran 1.19x
    faster per pair, in an A/B with an identical-code control (docs/bench_import.md). Used only
    when the copy runs on one thread: with more, the threads take their faults in parallel and
    populating first measured no faster. Contents are untouched, so memory already in use is
    safe; off Linux, or on a kernel without the call, it does nothing and the copy maps the
    pages itself."""

    MADV_POPULATE_WRITE = 23  # <linux/mman.h>
    MIN_BYTES = 1 << 20  # smaller tensors: a few faults, not worth a call

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def __call__(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if self._libc is None or tensor.device.type != "cpu" or storage.nbytes() < self.MIN_BYTES:
            return
        start = storage.data_ptr() - storage.data_ptr() % mmap.PAGESIZE
        length = storage.data_ptr() + storage.nbytes() - start
        if self._libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), self.MADV_POPULATE_WRITE):
            self._libc = None  # EINVAL: a kernel without the call; the copies fault the pages in


def _shard_range(size: int, rank: int, world: int) -> tuple[int, int]:
    per = size // world
    return rank * per, (rank + 1) * per


def _put(dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    """``dst.copy_(src)`` (converting the dtype in the same pass), shapes checked, no broadcasting."""
    if dst.shape != src.shape:
        raise ValueError(f"{what}: read {tuple(src.shape)} for a {tuple(dst.shape)} parameter slice")
    dst.copy_(src)


def fill_shard(reader: SliceReader, rule: Rule, param: torch.Tensor, tp_rank: int, tp_size: int) -> None:
    """Write this rank's part of ``rule``'s full tensor into ``param`` (no full-size temporaries)."""
    sharded = bool(getattr(param, "tensor_model_parallel", False)) and tp_size > 1
    rank, world = (tp_rank, tp_size) if sharded else (0, 1)
    what = f"{rule.sources} -> {rule.target} (tp {tp_rank}/{tp_size})"
    if rule.kind == "qkv":
        return _fill_qkv(reader, rule, param, rank, world, what)
    if rule.kind == "glu":  # [gate_r; up_r]
        half = param.shape[0] // 2
        for i, (name, shape) in enumerate(zip(rule.sources, rule.shapes)):
            _put(param[i * half : (i + 1) * half], reader.rows(name, *_shard_range(shape[0], rank, world)), what)
        return None
    if rule.kind == "vocab":
        return _fill_vocab_rows(reader, rule, param, rank, what)
    if rule.kind == "class_token":
        return _put(param, reader.full(rule.sources[0]).view(1, 1, -1), what)
    name, shape = rule.sources[0], rule.shapes[0]
    if not sharded:
        return _put(param, reader.full(name), what)
    dim = getattr(param, "partition_dim", 0)
    start, stop = _shard_range(shape[dim], rank, world)
    return _put(param, reader.rows(name, start, stop) if dim == 0 else reader.cols(name, start, stop), what)


def _fill_qkv(reader: SliceReader, rule: Rule, param: torch.Tensor, rank: int, world: int, what: str) -> None:
    """Whole query groups ``[g0, g1)``: per group its query heads, key head, value head."""
    g0, g1 = _shard_range(rule.groups, rank, world)
    grouped = param.view(g1 - g0, -1, *param.shape[1:])
    offset = 0
    for name, shape in zip(rule.sources, rule.shapes):
        per_group = shape[0] // rule.groups
        part = grouped[:, offset : offset + per_group]
        if name is None:  # Whisper's absent key bias
            part.zero_()
        else:
            _put(part, reader.rows(name, g0 * per_group, g1 * per_group).view(part.shape), what)
        offset += per_group
    if offset != grouped.shape[1]:
        raise ValueError(f"{what}: {offset} rows per group read for {grouped.shape[1]}")


def _fill_vocab_rows(reader: SliceReader, rule: Rule, param: torch.Tensor, rank: int, what: str) -> None:
    """Rows ``[rank * local_rows, ...)`` of the vocabulary; padding rows zero."""
    local_rows, vocab = param.shape[0], rule.shapes[0][0]
    start = rank * local_rows
    real = max(min(start + local_rows, vocab) - start, 0)
    if real:
        _put(param[:real], reader.rows(rule.sources[0], start, start + real), what)
    param[real:].zero_()


def rules_by_target(rules: list[Rule]) -> dict[str, Rule]:
    """Rules keyed by the local-spec name and by the transformer-engine spec's name."""
    out = {}
    for rule in rules:
        out[rule.target] = rule
        alias = te_name(rule.target)
        if alias:
            out[alias] = rule
    return out


@torch.no_grad()
def load_pretrained(part: torch.nn.Module, imp: ModuleImport, tp_rank: int, tp_size: int) -> set[str]:
    """Fill every parameter (and buffer) of ``part`` that ``imp``'s rules cover; returns their local names."""
    by_target = rules_by_target(imp.rules)
    canonical = canonical_names(part)
    tensors = dict(part.named_parameters())
    tensors.update((name, buf) for name, buf in part.named_buffers() if name.rsplit(".", 1)[-1] in ("positions",))
    filled = set()
    reader = SliceReader(imp)
    try:
        with at_least_threads(rank_cpu_share()) as threads:  # memory-bound copies: every core of the rank's share
            prefault = PageFaulter() if threads == 1 else None
            for name, tensor in tensors.items():
                rule = by_target.get(canonical.get(name, name))
                if rule is not None:
                    if prefault:
                        prefault(tensor)
                    fill_shard(reader, rule, tensor, tp_rank, tp_size)
                    reader.release()
                    filled.add(name)
    finally:
        reader.close()
    return filled


def covered(part: torch.nn.Module, imp: ModuleImport) -> set[str]:
    """Local names of ``part``'s parameters the checkpoint fills (nothing is read)."""
    by_target = rules_by_target(imp.rules)
    canonical = canonical_names(part)
    return {name for name, _ in part.named_parameters() if canonical[name] in by_target}
