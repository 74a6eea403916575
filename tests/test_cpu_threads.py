"""Each rank's share of the node's CPUs, and the pretrained import that copies on it.

A GPU job's ranks run on one torch thread (torchrun sets OMP_NUM_THREADS=1); on a lent
16-core H100 box that import left 14 cores idle and took 5.1x transformers' threaded
``from_pretrained`` (scripts/bench_import.py). The import now raises the rank's threads to
its share for the copies and gives them back.
"""

from __future__ import annotations

import os

import pytest
import torch
from hf_support import make_llama

from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.runtime.parallel.cpu_threads import at_least_threads, rank_cpu_share


@pytest.fixture
def one_thread():
    """torch on one thread for the test (as under torchrun), the process's count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_share_is_the_affinity_divided_among_the_nodes_ranks(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("MIMO_CPU_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert rank_cpu_share() == cpus
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus * 4))  # more ranks than CPUs: still one thread each
    assert rank_cpu_share() == 1
    monkeypatch.setenv("MIMO_CPU_THREADS", "3")  # told: taken as is
    assert rank_cpu_share() == 3


def test_threads_are_raised_for_the_block_never_lowered(one_thread):
    with at_least_threads(3) as inside:
        assert inside == torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    torch.set_num_threads(4)
    with at_least_threads(2) as inside:
        assert inside == torch.get_num_threads() == 4
    assert torch.get_num_threads() == 4


def test_import_copies_on_the_ranks_share_and_gives_the_threads_back(tmp_path, monkeypatch, one_thread):
    from mimo_toolkit.runtime.eval import inference
    from mimo_toolkit.runtime.model import hf_import
    from mimo_toolkit.runtime.model.provider import MimoModelProvider

    threads_per_copy = []
    put = hf_import._put

    def put_and_count(dst, src, what):
        threads_per_copy.append(torch.get_num_threads())
        put(dst, src, what)

    monkeypatch.setattr(hf_import, "_put", put_and_count)
    monkeypatch.setenv("MIMO_CPU_THREADS", "3")
    path = make_llama(tmp_path / "llama", seed=1)
    job = resolve_job("llava", "tiny", sets=[f"model.llm.pretrained={path}"]).config
    with inference.single_process_group():
        single = inference.single_rank_job(job)
        single.model["llm"].pretrained = str(path)
        provider = MimoModelProvider.from_job(single)
        provider.finalize()
        model = provider.provide()
    assert len(threads_per_copy) >= 3 * single.model["llm"].num_layers and set(threads_per_copy) == {3}
    assert torch.get_num_threads() == 1  # training keeps the launcher's count
    # and the copies are the checkpoint's tensors (exact: a copy is the same on any thread count)
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        ref = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    ours = dict(model.named_parameters())["language_model.decoder.layers.0.mlp.linear_fc2.weight"]
    assert torch.equal(ours, ref.to(ours.dtype))
