"""The in-job runtime on CPU: real torchrun jobs over gloo (colocated and homogeneous layouts).

Every comparison runs the same recipe, seed and data under two layouts and asserts equal
losses and per-module gradient norms at every step (1e-4; a resumed run 1e-6); weights are
initialised layout-independently, so any difference is a bug in how the layouts split the
work (process groups, bridge, gradient reduction, loss normalisation).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from dist_support import HOMOGENEOUS_TP1, run_job, start_job, wait_for_step

pytestmark = pytest.mark.slow

__all__ = ["HOMOGENEOUS_TP1", "assert_same_losses"]  # other test modules import them from here


def assert_same_losses(a, b, tol=1e-4):
    assert len(a) == len(b) and a, (a, b)
    worst = max(abs(x - y) for x, y in zip(a, b))
    assert worst <= tol, f"losses differ by {worst}: {a} vs {b}"


def assert_same_runs(run, reference, tol=1e-4):
    """Equal losses AND equal per-module gradient norms at every step (relative to the norm:
    a loss hides a gradient scaled by a constant, e.g. averaged instead of summed over dp)."""
    assert_same_losses(run.losses, reference.losses, tol)
    for row, ref in zip(run.metrics, reference.metrics):
        norms, ref_norms = row["module_grad_norm"], ref["module_grad_norm"]
        assert set(norms) == set(ref_norms), (norms, ref_norms)
        for module, norm in norms.items():
            diff = abs(norm - ref_norms[module])
            assert diff <= tol * max(1.0, ref_norms[module]), f"step {row['step']} {module} grad norm {norm} vs {ref_norms[module]}"


def test_llm_tp2_matches_tp1(tmp_path, reference):
    run = run_job(tmp_path, "llava", sets=["train.steps=10", "layout.mode=homogeneous", "layout.llm.tp=2", "layout.vision.tp=2"])
    assert run.returncode == 0, run.output[-3000:]
    assert_same_runs(run, reference)


def test_colocated_matches_homogeneous(colocated, reference):
    """llava tiny's own layout: LLM TP2 DP1 and vision TP1 DP2 on the same 2 ranks."""
    run = colocated
    assert_same_runs(run, reference)
    assert all(row["bridge_bytes"]["forward"] > 0 for row in run.metrics)


def test_frozen_parameters_are_bit_identical_and_written_once(tmp_path):
    """Frozen vision encoder: identical to its initial weights after training; its projector
    and the LLM change. The frozen weights are written once (the run's frozen store), not
    into every checkpoint."""
    from mimo_toolkit.runtime.eval.reshard import module_state_dict
    from mimo_toolkit.runtime.train.dcp_io import read_index

    run = run_job(tmp_path, "llava", sets=["train.steps=4", "train.save_interval=2", "freeze.vision=true",
                                           *HOMOGENEOUS_TP1])
    assert run.returncode == 0, run.output[-3000:]
    step4 = tmp_path / "checkpoints/step-00000004"
    final = module_state_dict(step4, "vision")
    initial = _initial_weights(tmp_path, "vision")
    tensors = [k for k, v in initial.items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")]
    frozen = [k for k in tensors if k.startswith("encoders.")]
    trained = [k for k in tensors if k.startswith("input_projections.")]
    assert frozen and trained
    for key in frozen:
        assert same_elements(final[key], initial[key]), key
    assert all(not same_elements(final[k], initial[k]) for k in trained if k.endswith("weight"))
    llm_final = module_state_dict(step4, "llm")
    llm_initial = _initial_weights(tmp_path, "llm")
    changed = [k for k in llm_final if not same_elements(llm_final[k], llm_initial[k])]
    assert len(changed) > len(llm_final) // 2
    for step in ("step-00000002", "step-00000004"):
        keys = read_index(tmp_path / "checkpoints" / step).state_dict_metadata
        assert not [k for k in keys if k.startswith("model/vision/encoders.")], step
        assert any(k.startswith("model/vision/input_projections.") for k in keys)
    stores = list((tmp_path / "checkpoints").glob("frozen-*"))
    assert len(stores) == 1
    assert {k for k in read_index(stores[0]).state_dict_metadata} == {f"model/vision/{k}" for k in frozen}


def same_elements(stored: torch.Tensor, local: torch.Tensor) -> bool:
    """A checkpoint's canonical tensor against a TP1 model's parameter: the same elements in
    flat order (SwiGLU's fc1 is stored as [2, f, h], vocabulary tables without padding rows)."""
    return torch.equal(stored.reshape(-1), local.reshape(-1)[: stored.numel()])


def _initial_weights(tmp_path, module: str) -> dict:
    """The provider's initial weights of ``module`` on a 1-rank gloo group (layout-independent)."""
    out = tmp_path / f"init-{module}.pt"
    script = textwrap.dedent(f"""
        from mimo_toolkit.runtime.eager import run_eagerly
        run_eagerly()
        import os, json, torch, torch.distributed as dist
        dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=0, world_size=1)
        from mimo_toolkit.resolve import load_manifest
        from mimo_toolkit.runtime.model.provider import MimoModelProvider, _module_parts
        job = load_manifest(json.load(open("{tmp_path}/job.json"))).config
        job.layout.deployment_mode = "homogeneous"
        for m in job.layout.module_parallelisms.values():
            m.tp = m.dp = 1
        provider = MimoModelProvider.from_job(job)
        model = provider.provide()
        torch.save(_module_parts(model, "llm")["{module}"].state_dict(), "{out}")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    return torch.load(out, weights_only=False)


def test_sigterm_saves_and_resume_equals_uninterrupted(tmp_path, reference):
    """SIGTERM mid-run: the step finishes, a checkpoint is written, exit_status says
    preempted; rerunning in the same run directory continues exactly like the
    uninterrupted run."""
    sets = ["train.steps=10", "train.save_interval=0", *HOMOGENEOUS_TP1]
    proc = start_job(tmp_path, "llava", sets=sets)
    wait_for_step(tmp_path, 5, proc)
    os.kill(proc.pid, signal.SIGTERM)  # torchrun forwards it to every worker
    output, _ = proc.communicate(timeout=60)
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["reason"] == "preempted", output[-3000:]
    saved = (tmp_path / "checkpoints/latest").read_text().strip()
    assert saved == f"step-{status['step']:08d}" and status["step"] >= 5
    assert "exiting for requeue" in output

    resumed = run_job(tmp_path, "llava", sets=sets)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"resumed from step {status['step']}" in resumed.output
    assert [r["step"] for r in resumed.metrics] == list(range(1, 11))
    assert_same_runs(resumed, reference, tol=1e-6)


@pytest.mark.parametrize("recipe", ["multi_encoder"])
def test_tiny_preset_learns(tmp_path, recipe):
    """The tiny preset as shipped: 50 steps on 2 CPU processes, the loss falls. (llava tiny as
    shipped learns a real task in tests/test_eval.py, which asserts its validation loss falls
    and its accuracy; running it here too cost CI half a minute for nothing new.)"""
    run = run_job(tmp_path, recipe)
    assert run.returncode == 0, run.output[-3000:]
    losses = run.losses
    assert len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert json.loads((tmp_path / "exit_status.json").read_text())["reason"] == "completed"


def test_world_size_mismatch_fails_fast_on_every_rank(tmp_path):
    """A job whose layout does not fit the processes it got fails in seconds, never trains."""
    from dist_support import torchrun_cmd, write_job

    config, _ = write_job(tmp_path, "llava", sets=["train.steps=5"])
    proc = subprocess.run(torchrun_cmd(config, tmp_path, 3), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "the layout needs 2 ranks, this job has 3" in proc.stdout + proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
