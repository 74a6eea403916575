"""The import's page faulter (``hf_import.PageFaulter``): a fresh parameter's pages are mapped
in one call before a one-thread copy writes them, and memory already in use keeps its values."""

from __future__ import annotations

import sys

import pytest
import torch

from mimo_toolkit.runtime.model.hf_import import PageFaulter
from mimo_toolkit.runtime.train.memory_probe import status_kib

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_POPULATE_WRITE) is Linux's")


def rss_anon_kib() -> int:
    kib = status_kib("RssAnon")
    if kib is None:
        pytest.skip("no RssAnon in /proc/self/status")
    return kib


def test_a_fresh_tensors_pages_are_mapped_before_any_write():
    fresh = torch.empty(12 << 20)  # 48 MiB: its own mapping, no page touched yet
    before = rss_anon_kib()
    faulter = PageFaulter()
    faulter(fresh)
    if faulter._libc is None:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    grown = rss_anon_kib() - before
    assert grown >= 44 * 1024, f"resident set grew {grown} KiB for a 48 MiB tensor"


def test_memory_in_use_keeps_its_values():
    used = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB, every page written
    expected = used.clone()
    PageFaulter()(used[1000:])  # a view: the whole storage is populated, nothing written
    assert torch.equal(used, expected)
    PageFaulter()(torch.empty(0, device="meta"))  # not CPU memory: nothing to do
