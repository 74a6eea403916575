"""Heterogeneous deployment: encoders and the LLM on disjoint ranks (real torchrun jobs, gloo).

Each layout must reproduce the homogeneous run's losses: the bridge's DP fan-in/fan-out, the
TP leader/broadcast, the pipelined schedule and the gradient path back must all be exact.
The layouts with point-to-point messages run with ``MIMO_P2P_RENDEZVOUS=1``: every boundary
waits for its sends, and gloo completes a send only once its receive is posted, so these
runs execute the step programs under the rendezvous semantics NCCL imposes (test_schedule.py
replays the same programs without processes).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from dist_support import kill_group, run_job, start_job, wait_for_step, worker_pid
from test_runtime import HOMOGENEOUS_TP1, assert_same_runs

from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.runtime.train.schedule import build_schedule
from mimo_toolkit.runtime.train.trace import TRACE_ENV, chrome_trace, read_step

pytestmark = pytest.mark.slow

STEPS = ["train.steps=6"]
RENDEZVOUS = {"MIMO_P2P_RENDEZVOUS": "1"}


def hetero(procs: int, **modules: str) -> list[str]:
    """Overrides for a heterogeneous layout: module=tp,pp,dp,offset."""
    sets = [f"cluster.procs_per_node={procs}", "layout.mode=heterogeneous"]
    for name, spec in modules.items():
        tp, pp, dp, offset = spec.split(",")
        sets += [f"layout.{name}.tp={tp}", f"layout.{name}.pp={pp}", f"layout.{name}.dp={dp}", f"layout.{name}.rank_offset={offset}"]
    return sets


@pytest.fixture(scope="module")
def llava_ref(tmp_path_factory):
    run = run_job(tmp_path_factory.mktemp("llava-ref"), "llava", sets=[*STEPS, *HOMOGENEOUS_TP1])
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_vision_rank0_llm_rank1(tmp_path, llava_ref):
    run = run_job(tmp_path, "llava", sets=[*STEPS, *hetero(2, vision="1,1,1,0", llm="1,1,1,1")],
                  env={**RENDEZVOUS, TRACE_ENV: "1"})
    assert run.returncode == 0, run.output[-3000:]
    assert_same_runs(run, llava_ref)
    assert all(row["bridge_bytes"]["backward"] > 0 for row in run.metrics)
    # The step trace (MIMO_TRACE=1): each rank's operations, in its schedule's order.
    spans = read_step(tmp_path, 6)
    job = resolve_job("llava", "tiny", sets=[*STEPS, *hetero(2, vision="1,1,1,0", llm="1,1,1,1")]).config
    schedule = build_schedule(job.layout, 4, {"vision", "llm"})
    for rank, module in ((0, "vision"), (1, "llm")):
        ops = sorted((s for s in spans[rank] if s[1] in ("fwd", "bwd")), key=lambda s: s[2])
        assert [s[0] for s in ops] == [str(op) for op in schedule[frozenset({(module, 0)})]]
        assert {"consensus", "optimizer", "metrics write"} <= {s[0] for s in spans[rank]}
    assert len(chrome_trace(spans)["traceEvents"]) > 2 * 8


def test_vision_dp2_llm_tp2_on_four_ranks(tmp_path, llava_ref):
    run = run_job(tmp_path, "llava", sets=[*STEPS, *hetero(4, vision="1,1,2,0", llm="2,1,1,2")], env=RENDEZVOUS)
    assert run.returncode == 0, run.output[-3000:]
    assert_same_runs(run, llava_ref)


def test_fan_out_vision_dp1_llm_dp2(tmp_path, llava_ref):
    """One encoder replica feeds two LLM replicas (and gets both gradients back)."""
    run = run_job(tmp_path, "llava", sets=[*STEPS, "train.micro_batch_size=1", *hetero(3, vision="1,1,1,0", llm="1,1,2,1")], env=RENDEZVOUS)
    assert run.returncode == 0, run.output[-3000:]
    assert_same_runs(run, llava_ref)


@pytest.mark.parametrize("mode", ["heterogeneous", "colocated"])
def test_llm_pp2_matches_pp1(tmp_path, llava_ref, mode):
    if mode == "heterogeneous":
        sets = hetero(3, vision="1,1,1,0", llm="1,2,1,1")
    else:
        sets = ["layout.llm.tp=1", "layout.llm.pp=2"]
    run = run_job(tmp_path, "llava", sets=[*STEPS, *sets], env=RENDEZVOUS)
    assert run.returncode == 0, run.output[-3000:]
    assert_same_runs(run, llava_ref)


def test_multi_encoder_each_module_on_its_own_ranks(tmp_path_factory):
    ref = run_job(tmp_path_factory.mktemp("me-ref"), "multi_encoder", sets=[*STEPS, "layout.mode=homogeneous", "layout.llm.tp=1"])
    assert ref.returncode == 0, ref.output[-3000:]
    run = run_job(
        tmp_path_factory.mktemp("me-het"),
        "multi_encoder",
        sets=[*STEPS, *hetero(3, vision="1,1,1,0", audio="1,1,1,1", llm="1,1,1,2")],
        env=RENDEZVOUS,
    )
    assert run.returncode == 0, run.output[-3000:]
    assert_same_runs(run, ref)
    losses = ref.losses
    assert losses[-1] < losses[0]


def test_frozen_encoder_sends_no_gradient_bytes(tmp_path):
    run = run_job(
        tmp_path,
        "llava",
        sets=[*STEPS, "freeze.vision=true", "freeze.vision_projector=true", *hetero(2, vision="1,1,1,0", llm="1,1,1,1")],
    )
    assert run.returncode == 0, run.output[-3000:]
    rows = run.metrics
    assert all(row["bridge_bytes"]["backward"] == 0 for row in rows)
    assert all(row["bridge_bytes"]["forward"] > 0 for row in rows)


def test_killed_rank_ends_every_rank_and_is_named(tmp_path):
    proc = start_job(tmp_path, "llava", sets=["train.steps=500", *hetero(3, vision="1,1,1,0", llm="1,2,1,1")])
    try:
        wait_for_step(tmp_path, 3, proc)
        os.kill(worker_pid(1), signal.SIGKILL)
        start = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        kill_group(proc)
    assert proc.returncode != 0
    # The failure board, not the collective timeout (train.timeout_s, 600 s), ends the job.
    assert elapsed < 60 < json.loads((tmp_path / "job.json").read_text())["job"]["train"]["timeout_s"] / 5
    assert "rank 1 failed first" in output, output[-3000:]
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert status["reason"] == "failed" and status["first_failed_rank"] == 1


def test_heterogeneous_resume_equals_uninterrupted(tmp_path, llava_ref):
    sets = [*STEPS, "train.save_interval=0", *hetero(2, vision="1,1,1,0", llm="1,1,1,1")]
    proc = start_job(tmp_path, "llava", sets=sets)
    wait_for_step(tmp_path, 3, proc)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert json.loads((tmp_path / "exit_status.json").read_text())["reason"] == "preempted", output[-3000:]
    resumed = run_job(tmp_path, "llava", sets=sets)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert [r["step"] for r in resumed.metrics] == list(range(1, 7))
    assert_same_runs(resumed, llava_ref, tol=1e-6)


def test_nonfinite_gradients_skip_the_step_on_every_rank(tmp_path):
    """lr=1e30 blows the weights up after step 1, so later gradients are inf/nan: every rank
    (vision and LLM live on different ranks) must skip those steps together, without
    updating anything, crashing or hanging."""
    import torch

    sets = ["train.steps=4", "train.lr=1e30", "train.lr_warmup_steps=0", "train.save_interval=2",
            "train.keep_checkpoints=0", *hetero(2, vision="1,1,1,0", llm="1,1,1,1")]
    run = run_job(tmp_path, "llava", sets=sets)
    assert run.returncode == 0, run.output[-3000:]
    skipped = [row["skipped"] for row in run.metrics]
    assert skipped[0] is False and all(skipped[2:]), skipped
    from mimo_toolkit.runtime.eval.reshard import module_state_dict

    for module in ("vision", "llm"):
        step2 = module_state_dict(tmp_path / "checkpoints/step-00000002", module)
        step4 = module_state_dict(tmp_path / "checkpoints/step-00000004", module)
        for key, value in step4.items():
            assert torch.equal(value, step2[key]), f"{module}.{key} changed in a skipped step"


def test_colocated_encoders_let_a_pipelined_llm_pipeline():
    """Colocated encoder operations are gangs over every rank: in micro-batch order they would
    push one micro-batch through the whole LLM pipeline before the next. Their forwards go
    first, so stage 0 starts micro-batch 1 before micro-batch 0's backward (1F1B warm-up)."""
    layout = resolve_job("llava", "tiny", sets=["layout.llm.tp=1", "layout.llm.pp=2"]).config.layout
    lists = {min(r[1] for r in roles if r[0] == "llm"): [str(op) for op in ops]
             for roles, ops in build_schedule(layout, 4, {"vision", "llm"}).items()}
    first = lists[0]
    assert first[:3] == ["F(vision,0)", "F(vision,1)", "F(vision,2)"], first
    assert first.index("F(llm,1)") < first.index("B(llm,0)"), first
    # Every rank still runs the gang operations in the same order.
    assert [x for x in first if "vision" in x] == [x for x in lists[1] if "vision" in x]
