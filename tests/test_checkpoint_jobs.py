"""Distributed optimizer and torch.distributed.checkpoint on real torchrun jobs (gloo, 1-2 processes).

Oracles: the non-sharded optimizer on the same layout (10 steps within 1e-6), the uninterrupted
reference run (steps after a resume on another layout within 1e-4, on the same layout 1e-6),
and the files themselves (``latest`` always names a checkpoint that loads).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_support import HOMOGENEOUS_TP1, kill_group, run_job, start_job, write_job
from test_runtime import assert_same_losses

from mimo_toolkit.run_dir import RunDir

pytestmark = pytest.mark.slow

SHARDED = "train.distributed_optimizer=true"
#: Stop early without changing the LR schedule of the 10-step reference.
SCHEDULE_OF_10 = "train.lr_decay_steps=10"


def state_bytes(run) -> dict[str, dict[str, int]]:
    """Optimizer state bytes per module and rank, from the job's start-up line."""
    line = re.search(r"optimizer state bytes per rank \((\w+)\): (\{.*\})", run.output)
    assert line, run.output[-2000:]
    return json.loads(line[2])


def assert_sharded_bytes(sharded, replicated, dp: dict[str, int]) -> None:
    """Each rank holds 1/DP of the module's optimizer state (DP=1: all of it)."""
    for module, per_rank in state_bytes(sharded).items():
        for rank, size in per_rank.items():
            assert size == state_bytes(replicated)[module][rank] / dp[module], (module, rank, size)


@pytest.fixture(scope="module")
def sharded_dp2(tmp_path_factory):
    """The reference's layout (homogeneous TP1, DP2) with the distributed optimizer, 10 steps,
    a background save at step 5."""
    run = run_job(tmp_path_factory.mktemp("sharded"), "llava", sets=[
        "train.steps=10", "train.save_interval=5", SHARDED, *HOMOGENEOUS_TP1])
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_distributed_optimizer_equals_the_replicated_one_at_dp2(sharded_dp2, reference):
    assert_same_losses(sharded_dp2.losses, reference.losses, tol=1e-6)
    assert_sharded_bytes(sharded_dp2, reference, {"vision": 2, "llm": 2})
    assert (sharded_dp2.run_dir.checkpoint_dir / "latest").read_text().strip() == "step-00000010"
    assert "checkpoint of step" not in sharded_dp2.output  # no save failed (step 5's ran beside steps 6-7)


def test_distributed_optimizer_and_recompute_colocated_vision_dp2_llm_tp2(tmp_path, colocated):
    """The distributed optimizer with full recompute of the LLM and selective recompute of the
    ViT: the same losses as neither (10 steps, 1e-6)."""
    run = run_job(tmp_path, "llava", sets=["train.steps=10", SHARDED, "train.recompute.llm=full",
                                           "train.recompute.vision=selective"])
    assert run.returncode == 0, run.output[-3000:]
    assert_same_losses(run.losses, colocated.losses, tol=1e-6)
    assert_sharded_bytes(run, colocated, {"vision": 2, "llm": 1})


def checkpoint_at(source: RunDir, step: int, target: Path) -> RunDir:
    """A run directory whose newest checkpoint is ``source``'s checkpoint of ``step``."""
    name = f"step-{step:08d}"
    (target / "checkpoints").mkdir(parents=True)
    for path in [source.checkpoint_dir / name, *source.checkpoint_dir.glob("frozen-*")]:
        shutil.copytree(path, target / "checkpoints" / path.name)
    (target / "checkpoints/latest").write_text(name + "\n")
    rows = [r for r in source.read_metrics() if r["step"] <= step]
    (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return RunDir(target)


def test_resume_on_other_layouts_continues_the_reference(tmp_path, sharded_dp2, reference):
    """Stopped at step 5 on the reference's layout (distributed optimizer), resumed on: LLM TP2
    colocated (TP, deployment mode, DP and sharding change), then LLM PP2 with the distributed
    optimizer, then one process (node count and world size). Steps 6-10 equal the reference."""
    rd = checkpoint_at(sharded_dp2.run_dir, 5, tmp_path)
    legs = [(7, ["layout.llm.tp=2"]),
            (9, ["layout.llm.tp=1", "layout.llm.pp=2", SHARDED, "train.recompute.llm=selective"]),
            (10, [*HOMOGENEOUS_TP1, "cluster.procs_per_node=1"])]
    resumed_from = 5
    for steps, layout in legs:
        run = run_job(tmp_path, "llava", sets=[f"train.steps={steps}", SCHEDULE_OF_10, *layout])
        assert run.returncode == 0, run.output[-3000:]
        assert f"resumed from step {resumed_from} " in run.output
        resumed_from = steps
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, 11))
    assert_same_losses([r["loss"] for r in rd.read_metrics()][5:], reference.losses[5:], tol=1e-4)


def test_a_killed_or_stopped_background_save_never_becomes_latest(tmp_path, reference):
    """Saves every 2 steps, each held 4 s between writing its files and publishing them.
    SIGKILL while step 4's save is in flight: ``latest`` stays step 2, and the next attempt
    resumes from it. SIGTERM while a save is in flight: the save completes, the current step
    is saved, the job exits for requeue. The third attempt finishes: every loss equals the
    uninterrupted run's, and only the newest 3 checkpoints are kept."""
    sets = ["train.steps=10", "train.save_interval=2", *HOMOGENEOUS_TP1]
    os.environ["MIMO_TOOLKIT_TEST_SLOW_SAVE_S"] = "4"
    try:
        proc = start_job(tmp_path, "llava", sets=sets)
        wait_for_tmp(tmp_path, "step-00000004", proc)
        kill_group(proc)
        proc.wait(timeout=60)
        assert (tmp_path / "checkpoints/latest").read_text().strip() == "step-00000002"

        proc = start_job(tmp_path, "llava", sets=sets)
        wait_for_tmp(tmp_path, "step-00000004", proc)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert "resumed from step 2 " in output
        status = json.loads((tmp_path / "exit_status.json").read_text())
        assert status["reason"] == "preempted", output[-3000:]
        assert (tmp_path / "checkpoints/latest").read_text().strip() == f"step-{status['step']:08d}"
        assert (tmp_path / "checkpoints/step-00000004/meta.json").exists()
        preempted = status["step"]  # how far training got while step 4's save was held: timing
    finally:
        del os.environ["MIMO_TOOLKIT_TEST_SLOW_SAVE_S"]
    run = run_job(tmp_path, "llava", sets=sets)
    assert run.returncode == 0, run.output[-3000:]
    assert [r["step"] for r in run.metrics] == list(range(1, 11))
    assert_same_losses(run.losses, reference.losses, tol=1e-6)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    saved = sorted({2, 4, preempted} | {s for s in range(preempted + 1, 11) if s % 2 == 0})
    assert kept == [f"step-{s:08d}" for s in saved[-3:]] and not list((tmp_path / "checkpoints").glob(".tmp-*"))


def wait_for_tmp(run_dir: Path, name: str, proc, timeout: float = 180) -> None:
    """Until this attempt's save of ``name`` is written but not yet published (a killed
    attempt's stale ``.tmp-`` directory does not count)."""
    started, deadline = time.time(), time.monotonic() + timeout
    index = run_dir / "checkpoints" / f".tmp-{name}" / ".metadata"
    while time.monotonic() < deadline:
        if index.exists() and index.stat().st_mtime > started:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{index} never appeared")


# ---- bad input: one line, exit 2, before any process group ----------------------------------------


def start_rank0(run_dir: Path, sets=()) -> subprocess.CompletedProcess:
    """Rank 0 of a 2-rank job, without torchrun: it must stop before creating a process group."""
    config, world = write_job(run_dir, "llava", sets=[*sets, *HOMOGENEOUS_TP1])
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    return subprocess.run([sys.executable, "-m", "mimo_toolkit.train", "--config", str(config), "--run-dir",
                           str(run_dir)], capture_output=True, text=True, timeout=120, env=env)


def test_broken_or_foreign_checkpoints_are_refused_before_any_process_group(tmp_path, sharded_dp2):
    cases = {
        "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), r"__0_0\.distcp: 100 bytes, the checkpoint "
                      r"wrote \d+ \(truncated or overwritten\)"),
        "missing": (lambda p: p.unlink(), r"__0_0\.distcp: missing; restore it"),
    }
    for case, (damage, message) in cases.items():
        rd = checkpoint_at(sharded_dp2.run_dir, 10, tmp_path / case)
        damage(rd.checkpoint_dir / "step-00000010" / "__0_0.distcp")
        proc = start_rank0(tmp_path / case)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert re.fullmatch(rf"mimo-toolkit: error: \S+/step-00000010/{message}.*\n", proc.stderr), proc.stderr
    checkpoint_at(sharded_dp2.run_dir, 10, tmp_path / "foreign")
    proc = start_rank0(tmp_path / "foreign", sets=["model.llm.num_layers=4"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "was written by another model (model.llm.num_layers: 2 -> 4)" in proc.stderr


# ---- a full disk ----------------------------------------------------------------------------------


def mount_small_tmpfs(path: Path, size_bytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_fails_the_save_and_training_goes_on(tmp_path, sharded_dp2, reference):
    """Checkpoints on a file system with room for one and a half checkpoints: step 2's save
    succeeds, step 4's fails with the reason and leaves step 2 as latest, training goes on
    with unchanged numbers, and the final save's failure ends the job with the reason."""
    one = sum(f.stat().st_size for f in (sharded_dp2.run_dir.checkpoint_dir / "step-00000010").iterdir())
    frozen = sum(f.stat().st_size for d in sharded_dp2.run_dir.checkpoint_dir.glob("frozen-*") for f in d.iterdir())
    if not mount_small_tmpfs(tmp_path / "checkpoints", int(1.5 * one) + frozen + 64 * 1024):
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk case is not tested")
    try:
        run = run_job(tmp_path, "llava", sets=["train.steps=6", "train.save_interval=2", SCHEDULE_OF_10,
                                               *HOMOGENEOUS_TP1])
        assert "checkpoint of step 4 failed: OSError: [Errno 28] No space left on device" in run.output
        assert "latest stays step-00000002" in run.output
        # the same cause named the same way, whichever file (torch.save's zip writer or a
        # plain write) ran out of room
        assert run.returncode != 0 and "checkpoint of step 6 failed: OSError: [Errno 28] No space left on device" in run.output
        assert [r["step"] for r in run.metrics] == list(range(1, 7))
        assert_same_losses(run.losses, reference.losses[:6], tol=1e-6)
        assert (tmp_path / "checkpoints/latest").read_text().strip() == "step-00000002"
        assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(tmp_path / "checkpoints")], capture_output=True)
