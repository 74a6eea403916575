"""Checkpoints without a training job: the canonical placement of local shards, DCP resharding
in one process, the torch-free checks of a run directory (files, old format, the resume guard).

The placement test is the oracle for resharding: megatron-core's split (reproduced by
``init.shard``, itself checked against megatron-core's initialisation in the runtime tests)
cuts a full tensor into TP shards; every box a shard declares must hold exactly the full
tensor's elements at the box's canonical offsets, for strided and vocabulary-padded tensors,
whole or cut into distributed-optimizer flat ranges.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import warnings

import pytest
import torch

from mimo_toolkit import checkpoints
from mimo_toolkit.checkpoints import check_resume, check_run_dir, classify_changes
from mimo_toolkit.errors import UserError
from mimo_toolkit.run_dir import RunDir
from mimo_toolkit.runtime.model.init import shard
from mimo_toolkit.runtime.train import dcp_io
from mimo_toolkit.runtime.train.canonical import flat_boxes, placement
from mimo_toolkit.runtime.train.dcp_io import Boxes

# ---- boxes of flat ranges ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 3, 5), (2, 3, 2, 4)])
def test_flat_boxes_cover_a_range_exactly_in_order(shape):
    rng = random.Random(0)
    total = math.prod(shape)
    index = torch.arange(total).view(shape)
    for _ in range(200):
        start = rng.randrange(total)
        end = rng.randrange(start + 1, total + 1)
        covered = []
        for offsets, sizes in flat_boxes(shape, start, end):
            block = index[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))]
            values = block.reshape(-1).tolist()
            assert values == list(range(values[0], values[0] + len(values)))  # contiguous
            covered += values
        assert covered == list(range(start, end))


# ---- placement of megatron-core TP shards -------------------------------------------------------


def _local(full: torch.Tensor, dim: int, stride: int, rank: int, tp: int, parallel: bool = True):
    param = torch.nn.Parameter(shard(full, dim, stride, rank, tp) if parallel else full.clone())
    param.tensor_model_parallel, param.partition_dim, param.partition_stride = parallel, dim, stride
    return param


CASES = [  # key, full shape, dim, stride, vocab (None: not a vocabulary table), tensor-parallel
    ("decoder.layers.0.self_attention.linear_qkv.weight", (12, 4), 0, 1, None, True),
    ("decoder.layers.0.self_attention.linear_proj.weight", (4, 12), 1, 1, None, True),
    ("decoder.layers.0.mlp.linear_fc1.weight", (16, 4), 0, 2, None, True),  # SwiGLU gate + up
    ("embedding.word_embeddings.weight", (16, 4), 0, 1, 13, True),  # padded to 16, true vocab 13
    ("output_layer.weight", (16, 4), 0, 1, 10, True),
    ("decoder.final_layernorm.weight", (4,), 0, 1, None, False),
]


@pytest.mark.parametrize("key, shape, dim, stride, vocab, parallel", CASES)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_every_box_of_every_shard_holds_the_full_tensors_elements(key, shape, dim, stride, vocab, parallel, tp):
    full = torch.randn(shape)
    if vocab is not None:
        full[vocab:] = 0.0  # padding rows
    canonical = full.view(*shape[:dim], stride, shape[dim] // stride, *shape[dim + 1:]) if stride > 1 else full
    if vocab is not None:
        canonical = canonical[:vocab]
    rng = random.Random(tp)
    seen = torch.zeros(canonical.shape)
    for rank in range(tp):
        param = _local(full, dim, stride, rank, tp, parallel)
        pl = placement(key, param, rank, tp, vocab)
        assert pl.full_shape == tuple(canonical.shape)
        flat = param.data.view(-1)
        cut = sorted(rng.sample(range(1, flat.numel()), 2))  # three distributed-optimizer shards
        for start, end in zip([0, *cut], [*cut, flat.numel()]):
            for piece in pl.pieces(start, end):
                where = tuple(slice(o, o + s) for o, s in zip(piece.offsets, piece.sizes))
                assert torch.equal(piece.of(flat[start:end], base=start), canonical[where])
                seen[where] += 1
    expected = 1 if parallel and tp > 1 else tp  # replicated tensors are offered by every TP rank
    assert torch.equal(seen, torch.full_like(seen, expected))


def test_dcp_reshards_tp2_boxes_into_tp4_boxes_in_one_process(tmp_path):
    """Boxes written by two TP ranks (and a distributed-optimizer cut) are read back by four."""
    key, shape, vocab = "output_layer.weight", (16, 6), 11
    full = torch.randn(shape)
    full[vocab:] = 0.0
    written = Boxes((vocab, 6), torch.float32)
    for rank in range(2):
        pl = placement(key, _local(full, 0, 1, rank, 2), rank, 2, vocab)
        flat = shard(full, 0, 1, rank, 2).reshape(-1)
        for start, end in [(0, 17), (17, flat.numel())]:
            for piece in pl.pieces(start, end):
                written.boxes[piece.offsets] = piece.of(flat[start:end], base=start).clone()
    torch.distributed.checkpoint.save({key: written}, storage_writer=torch.distributed.checkpoint.FileSystemWriter(
        str(tmp_path)), planner=dcp_io.BoxSavePlanner(), no_dist=True)
    for rank in range(4):
        param = _local(torch.zeros(shape), 0, 1, rank, 4)
        pl = placement(key, param, rank, 4, vocab)
        target = Boxes(pl.full_shape, torch.float32)
        for piece in pl.pieces():
            target.boxes[piece.offsets] = piece.of(param.data.view(-1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp_io.load({key: target}, tmp_path)
        mine = shard(full, 0, 1, rank, 4)
        assert torch.equal(param.data, mine), rank  # padding rows stay zero


# ---- the run directory, torch-free --------------------------------------------------------------


def _fake_checkpoint(rd: RunDir, step: int, config: dict, files: dict[str, bytes]) -> None:
    path = rd.checkpoint_dir / checkpoints.step_name(step)
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    meta = {"format": checkpoints.FORMAT, "step": step, "config": config,
            "files": {n: len(d) for n, d in files.items()}}
    (path / "meta.json").write_text(json.dumps(meta))
    (rd.checkpoint_dir / "latest").write_text(path.name + "\n")


CONFIG = {"model": {"llm": {"num_layers": 2, "vocab_size": 320}}, "train": {"steps": 10, "seed": 1},
          "layout": {"deployment_mode": "colocated", "module_parallelisms": {"llm": {"tp": 2}}},
          "freeze": {}, "cluster": {"nodes": 1}}


def _changed(**sets) -> dict:
    config = json.loads(json.dumps(CONFIG))
    for dotted, value in sets.items():
        *path, last = dotted.split("__")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def test_resume_guard_classifies_changes():
    ok = classify_changes(CONFIG, _changed(train__steps=20, layout__module_parallelisms__llm__tp=1,
                                           cluster__nodes=4, layout__deployment_mode="heterogeneous"))
    assert len(ok.resumable) == 4 and not ok.incompatible and not ok.other
    bad = classify_changes(CONFIG, _changed(model__llm__num_layers=4, freeze__vision=True, train__seed=2))
    assert bad.incompatible == ["freeze.vision: <unset> -> True", "model.llm.num_layers: 2 -> 4"]
    assert bad.other == ["train.seed: 1 -> 2"]


def test_resume_guard_names_the_keys_and_force_allows_only_what_loads():
    check_resume(CONFIG, _changed(train__steps=20), "run/step-5")
    with pytest.raises(UserError, match=r"written by another model \(model\.llm\.vocab_size: 320 -> 512\)"):
        check_resume(CONFIG, _changed(model__llm__vocab_size=512), "run/step-5", force=True)
    with pytest.raises(UserError, match=r"changed settings \(train\.seed: 1 -> 7\).*--force"):
        check_resume(CONFIG, _changed(train__seed=7), "run/step-5")
    check_resume(CONFIG, _changed(train__seed=7), "run/step-5", force=True)


def test_run_dir_guard_reads_the_checkpoint_config(tmp_path):
    rd = RunDir(tmp_path)
    check_run_dir(rd, CONFIG)  # a fresh directory accepts anything
    _fake_checkpoint(rd, 5, CONFIG, {"__0_0.distcp": b"x" * 10, ".metadata": b"m"})
    check_run_dir(rd, _changed(train__steps=50))
    with pytest.raises(UserError, match="model.llm.num_layers"):
        check_run_dir(rd, _changed(model__llm__num_layers=3), force=True)


def test_missing_or_truncated_files_are_named(tmp_path):
    rd = RunDir(tmp_path)
    _fake_checkpoint(rd, 5, CONFIG, {"__0_0.distcp": b"x" * 10, "__1_0.distcp": b"y" * 10, ".metadata": b"m"})
    info = checkpoints.latest(rd)
    checkpoints.verify_files(info)
    (info.path / "__1_0.distcp").write_bytes(b"y" * 4)
    with pytest.raises(UserError, match=r"step-00000005/__1_0.distcp: 4 bytes, the checkpoint wrote 10 \(truncated"):
        checkpoints.verify_files(info)
    (info.path / "__0_0.distcp").unlink()
    with pytest.raises(UserError, match=r"step-00000005/__0_0.distcp: missing"):
        checkpoints.verify_files(info)


def test_broken_pointers_and_the_old_format_are_refused_in_one_line(tmp_path):
    rd = RunDir(tmp_path)
    _fake_checkpoint(rd, 5, CONFIG, {".metadata": b"m"})
    (rd.checkpoint_dir / "step-00000005" / "meta.json").unlink()
    with pytest.raises(UserError, match="step-00000005 is incomplete"):
        checkpoints.latest(rd)
    shutil.rmtree(rd.checkpoint_dir)
    old = rd.checkpoint_dir / "step-00000004" / "model" / "llm"
    old.mkdir(parents=True)
    (old / "tp00-pp00.pt").write_bytes(b"old")
    with pytest.raises(UserError) as err:
        checkpoints.latest(rd)
    assert "\n" not in str(err.value) and "start a new run directory" in str(err.value)
