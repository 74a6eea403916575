"""The import's reader (``hf_import.SliceReader``): views of the memory-mapped safetensors
files, equal to what safetensors itself loads, and pages dropped from the process after each
parameter, which keeps a rank's resident set at about its shard (the 1.25x bound of
``scripts/bench_import.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimo_toolkit.hf.checkpoint import read_header
from mimo_toolkit.runtime.model.hf_import import SliceReader
from mimo_toolkit.runtime.train.memory_probe import status_kib


def rss_file_kib() -> int:
    kib = status_kib("RssFile")
    if kib is None:
        pytest.skip("no RssFile in /proc/self/status")
    return kib


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "big": torch.randn(4096, 8192).to(torch.bfloat16),  # 64 MiB
        "w": torch.randn(6, 10).to(torch.bfloat16),
        "b": torch.randn(10),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    imp = SimpleNamespace(module="llm", source=SimpleNamespace(checkpoint=SimpleNamespace(tensors=read_header(path))))
    return path, SliceReader(imp)


def test_slices_equal_what_safetensors_loads(checkpoint):
    path, reader = checkpoint
    expected = load_file(str(path))
    assert torch.equal(reader.full("b"), expected["b"])
    assert torch.equal(reader.rows("w", 2, 5), expected["w"][2:5])
    assert torch.equal(reader.cols("w", 3, 8), expected["w"][:, 3:8])
    assert reader.full("empty").shape == (0, 4)
    into = torch.empty(6, 5)
    into.copy_(reader.cols("w", 5, 10))  # the import's copy: converts bf16 -> fp32 in the same pass
    assert torch.equal(into, expected["w"][:, 5:10].float())
    reader.close()


def test_release_drops_the_pages_read_from_the_process(checkpoint):
    _, reader = checkpoint
    before = rss_file_kib()
    shard = torch.empty(2048, 8192)
    shard.copy_(reader.rows("big", 1024, 3072))  # reads 32 MiB of the mapping
    touched = rss_file_kib() - before
    reader.release()
    left = rss_file_kib() - before
    reader.close()
    assert touched > 24 * 1024, touched  # the mapped pages count as this process's memory...
    assert left < 4 * 1024, left  # ...until released (they stay in the page cache)
