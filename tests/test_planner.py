"""The layout planner: parameter and FLOP formulas, memory, search, validation, CLI.

Everything here is pure Python and fast; no torch.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from mimo_toolkit.cli import cli
from mimo_toolkit.config import LanguageModel
from mimo_toolkit.costs.flops import BIDIRECTIONAL, forward_flops
from mimo_toolkit.costs.params import count_params
from mimo_toolkit.errors import UserError
from mimo_toolkit.overrides import apply_overrides
from mimo_toolkit.recipe import load_recipe
from mimo_toolkit.recipes.big_encoder import intern_vit_6b
from mimo_toolkit.recipes.llava import clip_vit_l14_336, vicuna_7b
from mimo_toolkit.recipes.multi_encoder import whisper_base_encoder
from mimo_toolkit.resolve import resolve_job, validate
from mimo_toolkit.planner.calibration import (
    CalibrationProfile,
    compare_step_times,
    load_profile,
    machine_from_profile,
    profile_from_timings,
    work_flops_per_rank,
)
from mimo_toolkit.planner.candidate import Candidate, Placement, evaluate_layout
from mimo_toolkit.planner.cost import bubble_fraction
from mimo_toolkit.planner.hardware import GIB, builtin_machine
from mimo_toolkit.planner.memory import module_memory
from mimo_toolkit.planner.plan import PlanRequest, make_plan
from mimo_toolkit.planner.rules import REASONS, apply_candidate, layout_reason
from mimo_toolkit.planner.search import micro_batch_sizes, search
from mimo_toolkit.planner.workload import Assumptions, make_problem
from mimo_toolkit.typed import from_plain

CPU_PROFILE = {
    "format": "mimo-toolkit-calibration/1",
    "machine": {"device": "cpu", "description": "test", "memory_gib": 4},
    "modules": {"llm": {"flops_per_s": 2e9, "tp": 2}, "vision": {"seconds_per_flop": 1e-9},
                "audio": {"flops_per_s": 1e9}},
    "step_overhead_s": 0.01,
}


def _problem(recipe: str, preset: str | None = None, nodes: int = 4, gpu: str = "h100", sets=(), **assume):
    job = load_recipe(recipe).build(preset)
    apply_overrides(job, sets)
    return job, make_problem(job, builtin_machine(gpu), nodes, 8, Assumptions(**assume))


# ---- parameter counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, published, exact",
    [
        (vicuna_7b(), 6.7e9, 6_738_415_616),  # LLaMA-7B / Vicuna-7B (Hugging Face count)
        (clip_vit_l14_336(), 304e6, 303_507_456),  # CLIPVisionModel ViT-L/14-336
        (whisper_base_encoder(), 20e6, 20_590_592),  # WhisperEncoder of whisper-base
    ],
)
def test_parameter_counts_match_published(arch, published, exact):
    counts = count_params(arch, 4096)
    body = counts.total if isinstance(arch, LanguageModel) else counts.body  # projector is ours
    assert abs(body - published) / published < 0.03
    assert abs(body - exact) / exact < 0.001


def test_projector_and_intern_vit_counts():
    # LLaVA-1.5's 2-layer MLP projector 1024 -> 4096 -> 4096: 20.98M.
    assert count_params(clip_vit_l14_336(), 4096).projector == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    # InternViT-6B-448px-V1-5 (45 of InternViT-6B's 48 layers): about 5.5B.
    assert abs(count_params(intern_vit_6b(), 4096).body - 5.54e9) / 5.54e9 < 0.03


# ---- FLOPs ----------------------------------------------------------------------------------


def test_llm_flops_match_narayanan_formula():
    """GPT with a 4h MLP and full attention: 24 s L h^2 (1 + s/6h + V/12hL) per sample forward."""
    gpt = LanguageModel(num_layers=24, hidden_size=2048, num_attention_heads=16, vocab_size=50257,
                        max_sequence_length=2048, add_bias_linear=False)
    s, L, h, V = 2048, 24, 2048, 50257
    expected = 24 * s * L * h * h * (1 + s / (6 * h) + V / (12 * h * L))
    assert forward_flops(gpt, h, s, causal=BIDIRECTIONAL).total == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("image_size, gmacs", [(224, 81.08), (336, 190.7)])
def test_vit_flops_match_published_profiles(image_size, gmacs):
    """OpenCLIP's profile of ViT-L-14 (fvcore multiply-accumulates, attention included)."""
    vit = replace(clip_vit_l14_336(), image_size=image_size)
    f = forward_flops(vit, 4096, 2048)
    assert f.body == pytest.approx(2 * gmacs * 1e9, rel=0.03)
    tokens = (image_size // 14) ** 2 + 1
    c = count_params(vit, 4096)
    assert f.layers == pytest.approx(2 * tokens * c.layer_matmul * 24 + 4 * 24 * tokens**2 * 1024)
    assert f.projector == pytest.approx(2 * (tokens - 1) * (1024 * 4096 + 4096 * 4096))


def test_work_multipliers_follow_freezing():
    _, stage1 = _problem("llava", "1node")  # LLM and encoder frozen, projector trained
    vision, llm = stage1.modules
    assert (vision.body_multiplier, vision.projector_multiplier, llm.body_multiplier) == (1, 3, 2)
    _, full = _problem("big_encoder", "1node")  # everything trains
    assert [(m.body_multiplier, m.projector_multiplier) for m in full.modules] == [(3, 3), (3, 0)]
    _, encoder_only = _problem("llava", "1node", sets=["freeze.vision=false", "freeze.vision_projector=true"])
    vision, llm = encoder_only.modules
    assert (vision.body_multiplier, vision.projector_multiplier, llm.body_multiplier) == (3, 2, 2)
    _, frozen = _problem("llava", "1node", sets=["freeze.vision_projector=true", "freeze.llm=false"])
    vision, llm = frozen.modules
    assert (vision.body_multiplier, vision.projector_multiplier, llm.body_multiplier) == (1, 1, 3)
    assert not vision.trains and not vision.needs_backward


# ---- cost and memory ------------------------------------------------------------------------


def test_bubble_formula():
    assert bubble_fraction(4, 16) == pytest.approx(3 / 19)
    assert round(bubble_fraction(4, 16), 3) == 0.158
    assert bubble_fraction(1, 7) == 0.0


def test_memory_shrinks_with_dp_only_with_a_distributed_optimizer():
    for distributed in (True, False):
        _, p = _problem("big_encoder", "1node", distributed_optimizer=distributed)
        llm = p.llm
        mem = [module_memory(p, llm, 2, 1, 1, dp, 1, 8, False) for dp in (1, 2, 8)]
        if distributed:
            assert mem[0].optimizer > mem[1].optimizer > mem[2].optimizer
            assert mem[0].optimizer == pytest.approx(8 * mem[2].optimizer)
        else:
            assert mem[0].total == mem[1].total == mem[2].total
        assert mem[0].weights == mem[2].weights and mem[0].gradients == mem[2].gradients


def test_frozen_modules_hold_only_weights_and_recompute_saves_activations():
    _, p = _problem("llava", "1node")
    vision, llm = p.modules
    frozen = module_memory(p, llm, 1, 1, 1, 8, 4, 8, False)
    assert frozen.gradients == frozen.optimizer == 0
    assert frozen.weights == pytest.approx(llm.params.total * 2)
    assert module_memory(p, llm, 1, 1, 1, 8, 4, 8, True).activations < frozen.activations / 5


@pytest.mark.parametrize("sets", [
    ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1"],
    ["layout.llm.tp=1", "layout.llm.pp=2"],  # colocated: encoder forwards first
    ["cluster.procs_per_node=2", "layout.mode=heterogeneous", "layout.vision.dp=1", "layout.llm.tp=1",
     "layout.llm.dp=1", "layout.llm.rank_offset=1"],
    ["cluster.procs_per_node=3", "layout.mode=heterogeneous", "layout.vision.dp=1", "layout.llm.tp=1",
     "layout.llm.pp=2", "layout.llm.dp=1", "layout.llm.rank_offset=1"],
], ids=["homogeneous", "colocated-pp2", "heterogeneous", "heterogeneous-pp2"])
def test_micro_batches_in_flight_are_the_schedules(sets):
    """The memory model's activations per stage assume ``in_flight`` micro-batches; the
    schedule the runtime executes decides it (forwards not yet matched by their backward)."""
    from mimo_toolkit.planner.memory import in_flight
    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.runtime.train.schedule import backward_modules, build_schedule

    job = resolve_job("llava", "tiny", sets=["train.global_batch_size=32", "train.micro_batch_size=2", *sets]).config
    layout = job.layout
    p = make_problem(job, builtin_machine("h100"), 1, layout.world_size())
    m = job.train.global_batch_size // (job.train.micro_batch_size * layout.language.dp)
    hetero = layout.deployment_mode == "heterogeneous"
    checked = 0
    for ops in build_schedule(layout, m, backward_modules(job)).values():
        for w in p.modules:
            for stage in range(layout.module_parallelisms[w.name].pp):
                mine = [op for op in ops if op.module == w.name and op.stage == stage]
                if not mine:
                    continue
                depth = peak = 0
                for op in mine:
                    depth += 1 if op.kind == "F" else -1
                    peak = max(peak, depth)
                assert peak == in_flight(w, layout.module_parallelisms[w.name].pp, stage, m, layout.language.pp,
                                         hetero), (w.name, stage)
                checked += 1
    assert checked >= 2


# ---- search ---------------------------------------------------------------------------------


def _validated(job, candidate, nodes=4, gpn=8):
    copy = job.copy()
    apply_candidate(copy, candidate, nodes, gpn, True)
    return validate(copy, nodes * gpn)


@pytest.mark.parametrize("recipe", ["llava", "multi_encoder", "big_encoder"])
def test_every_returned_layout_passes_validation(recipe):
    job, problem = _problem(recipe, "1node")
    result = search(problem, top_k=5)
    assert result.top
    for cand in [*result.top, *result.best.values()]:
        resolved = _validated(job, cand)
        assert resolved.world_size == 32
        assert resolved.config.layout.deployment_mode == cand.mode


def _every_layout(mbs_sizes, gpus=8):
    """Every (mode, mbs, placements) of llava on one node, invalid shapes included."""
    tps, pps, cps, dps = (1, 2, 4, 8), (1, 2, 3, 4), (1, 2), (1, 2, 3, 4, 6, 8)
    for mbs in mbs_sizes:
        for (vt, vp, vd), (lt, lc, lp, ld) in itertools.product(
            itertools.product(tps, pps, dps), itertools.product(tps, cps, pps, dps)
        ):
            v_size, l_size = vt * vp * vd, lt * lc * lp * ld
            modes = []
            if v_size + l_size == gpus:
                modes.append(("heterogeneous", v_size))
            if v_size == l_size == gpus:
                modes += [("colocated", 0), ("homogeneous", 0)]
            for mode, l_off in modes:
                yield mode, mbs, [Placement("vision", vt, 1, vp, vd, 0), Placement("llm", lt, lc, lp, ld, l_off)]


def test_cheap_rules_agree_with_project_validation_on_a_whole_small_space():
    """Every layout of 1 node x 8 GPUs (llava; invalid shapes included): the search's
    pre-filter accepts exactly what resolve.validate accepts (tp_straddle is planner-only)."""
    job, problem = _problem("llava", "1node", nodes=1, sets=["train.global_batch_size=48"])
    scratch = job.copy()  # apply_candidate replaces everything validate looks at
    checked = 0
    for mode, mbs, placements in _every_layout((1, 2, 4)):
        reason = layout_reason(problem, mode, mbs, placements)
        apply_candidate(scratch, _fake_candidate(mode, mbs, placements), 1, 8, True)
        try:
            validate(scratch, 8)
            valid = True
        except UserError:
            valid = False
        checked += 1
        assert valid == (reason in (None, "tp_straddle")), (mode, mbs, placements, reason)
    assert checked > 1000


def test_bounded_search_finds_the_brute_force_optimum():
    """Pruning by lower bounds loses nothing: the best of every valid layout, estimated one by
    one, is the search's best (llava on 1 x 8 H200)."""
    _, problem = _problem("llava", "1node", nodes=1, gpu="h200", sets=["train.global_batch_size=24"])
    best = search(problem, top_k=1).top[0]
    steps = []
    for mode, mbs, placements in _every_layout(micro_batch_sizes(problem)):
        if layout_reason(problem, mode, mbs, placements) is None:
            layout = _fake_candidate(mode, mbs, placements).to_layout("llm", {"vision": -200})
            cand = evaluate_layout(problem, layout, mbs)
            if cand.memory_gib * GIB <= problem.machine.usable_bytes:
                steps.append(cand.step_s)
    assert len(steps) > 50
    assert best.step_s == pytest.approx(min(steps), rel=1e-12)


def _fake_candidate(mode, mbs, placements):
    return Candidate(mode, mbs, tuple(placements), 1.0, 1.0, None, (0.0,))


def test_pruning_reasons_are_counted():
    _, problem = _problem("big_encoder", "1node")
    result = search(problem, top_k=3)
    pruned = result.log.by_reason()
    assert set(pruned) <= set(REASONS)
    for reason in ("batch", "oom", "dp_ratio", "bound"):
        assert pruned[reason] > 0, reason
    assert result.log.shapes["heads"] > 0 and result.log.shapes["layers"] > 0  # 25 heads, 45 layers
    assert result.log.shapes["encoder_pp"] > 0 and result.log.shapes["cp"] > 0  # what the runtime cannot run
    assert result.log.considered == result.log.evaluated + sum(pruned.values())
    assert result.log.rejections == []
    homogeneous = result.log.by_reason("homogeneous")
    assert homogeneous["oom"] > 0 and "homogeneous" not in result.best  # tp1 pp1 only: 12.3B per GPU


def test_llava_gain_is_honestly_close_to_one():
    _, problem = _problem("llava", "1node")
    result = search(problem, top_k=3)
    assert 0.95 <= result.gain <= 1.15
    encoder_share = problem.modules[0].work_flops / sum(m.work_flops for m in problem.modules)
    assert encoder_share < 0.02


def test_big_encoder_gain():
    # 4 x 8 H100: the only shared shape (tp1 pp1) does not fit, so no homogeneous layout exists.
    _, problem = _problem("big_encoder", "1node")
    result = search(problem, top_k=3)
    assert result.shared_shapes == ("tp1 pp1",)
    assert result.gain == math.inf
    # 3 x 8 H200: tp1 pp1 fits, and the best per-module layout is well ahead of it.
    _, problem = _problem("big_encoder", "1node", nodes=3, gpu="h200")
    result = search(problem, top_k=3)
    assert result.baseline is not None and result.gain > 1.15
    assert result.top[0].mode == "heterogeneous"


def test_heterogeneous_step_is_the_busiest_stage_plus_fill():
    _, problem = _problem("big_encoder", "1node", nodes=3, gpu="h200")
    best = search(problem, top_k=1).top[0]
    b = best.breakdown
    busiest = max(b["vision.busy_s"], b["llm.busy_s"])
    assert busiest < best.step_s < b["vision.busy_s"] + b["llm.busy_s"]


def test_512_nodes_plan_in_under_a_second():
    """Best of three (the machine may be busy); scripts/bench_planner.py reports medians."""
    for recipe in ("llava", "big_encoder"):
        req = PlanRequest(recipe, nodes=512, sets=("train.global_batch_size=4096",))
        times = []
        for _ in range(3):
            started = time.perf_counter()
            plan = make_plan(req)
            times.append(time.perf_counter() - started)
        assert min(times) < 1.0, times
        assert plan.result.top and plan.problem.world == 4096


# ---- applying a plan ------------------------------------------------------------------------


def _module_sizes(layout):
    return {n: (m.tp, m.cp, m.pp, m.dp, m.rank_offset)
            for n, m in layout.module_parallelisms.items()}


@pytest.mark.parametrize("recipe, nodes", [("big_encoder", 3), ("llava", 4)])
def test_apply_writes_a_preset_that_resolves_to_the_chosen_layout(tmp_path, recipe, nodes):
    path = tmp_path / "planned.py"
    res = CliRunner().invoke(cli, ["plan", recipe, "--nodes", str(nodes), "--gpu", "h200", "--apply", str(path),
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    chosen = json.loads(res.stdout)["top"][0]
    resolved = resolve_job(str(path))
    layout = resolved.config.layout
    assert layout.deployment_mode == chosen["mode"]
    assert resolved.world_size == nodes * 8 and resolved.nodes == nodes
    assert resolved.config.train.micro_batch_size == chosen["micro_batch_size"]
    assert _module_sizes(layout) == {
        m["name"]: (m["tp"], m["cp"], m["pp"], m["dp"], m["rank_offset"]) for m in chosen["modules"]
    }
    # --format overrides says the same thing.
    res = CliRunner().invoke(cli, ["plan", recipe, "--nodes", str(nodes), "--gpu", "h200", "--format", "overrides"])
    sets = [tok for tok in res.stdout.split() if tok != "--set"]
    assert _module_sizes(resolve_job(recipe, sets=sets).config.layout) == _module_sizes(layout)


def test_apply_keeps_user_overrides(tmp_path):
    path = tmp_path / "planned.py"
    res = CliRunner().invoke(cli, ["plan", "llava", "--nodes", "2", "--set", "train.global_batch_size=128",
                                   "--apply", str(path)])
    assert res.exit_code == 0, res.output
    job = resolve_job(str(path)).config
    assert job.train.global_batch_size == 128 and "train.global_batch_size=128" in job.overrides


# ---- calibration ----------------------------------------------------------------------------


def test_cpu_plan_uses_the_profile(tmp_path):
    profile = tmp_path / "calib.json"
    profile.write_text(json.dumps(CPU_PROFILE))
    plan = make_plan(PlanRequest("big_encoder", "tiny", profile=str(profile)))
    assert plan.machine.name == "cpu" and plan.problem.precision == "fp32"
    assert plan.machine.module_rates["vision"].flops_per_s == pytest.approx(1e9)
    assert plan.best.mfu is None and plan.problem.world == 2
    for cand in plan.result.top:
        assert cand.step_s > CPU_PROFILE["step_overhead_s"]
    # twice the measured rates: every step gets faster
    rates = {kind: rate.flops_per_s for kind, rate in plan.machine.module_rates.items()}
    doubled = {kind: {"flops_per_s": 2 * r, "tp": plan.machine.module_rates[kind].tp} for kind, r in rates.items()}
    profile.write_text(json.dumps({**CPU_PROFILE, "modules": doubled}))
    assert make_plan(PlanRequest("big_encoder", "tiny", profile=str(profile))).best.step_s < plan.best.step_s


def test_profile_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**CPU_PROFILE, "modules": {"llm": {"flops_per_s": 1, "seconds_per_flop": 1}}}))
    with pytest.raises(UserError, match="exactly one of"):
        load_profile(bad)
    bad.write_text(json.dumps({**CPU_PROFILE, "machine": {"device": "cpu"}}))
    with pytest.raises(UserError, match="memory_gib"):
        load_profile(bad)
    bad.write_text("{")
    with pytest.raises(UserError, match="invalid JSON"):
        load_profile(bad)


def test_profile_from_timings_recovers_rates_and_overhead():
    """What a calibration command will do: time a known layout, fit a profile, compare."""
    job = resolve_job("llava", "tiny").config
    true_rates = {"vision": 3e9, "llm": 1.5e9}
    flops = work_flops_per_rank(job)
    seconds = {name: flops[name] / true_rates[name] for name in flops}
    truth = from_plain(CalibrationProfile, {
        **CPU_PROFILE, "step_overhead_s": 0.05,
        "modules": {"vision": {"flops_per_s": 3e9}, "llm": {"flops_per_s": 1.5e9, "tp": 2}},
    }, "profile")
    step = _predict(job, truth)
    profile = profile_from_timings(job, "cpu", seconds, [9.9, step, step, step], memory_gib=4)
    assert profile.modules["vision"].flops_per_s == pytest.approx(3e9)
    assert profile.modules["llm"].flops_per_s == pytest.approx(1.5e9) and profile.modules["llm"].tp == 2
    assert profile.step_overhead_s == pytest.approx(0.05)
    comparison = compare_step_times(_predict(job, profile), [9.9, step, step])  # first step: warm-up
    assert abs(comparison.error) < 1e-9 and "error" in comparison.summary()
    assert _parse_profile(profile.to_json()).modules == profile.modules


def test_a_layout_with_full_recompute_is_charged_its_extra_forward():
    """The job's train.recompute reaches the prediction (it was once ignored: a full-recompute
    layout got the step time of one without)."""
    profile = from_plain(CalibrationProfile, {
        **CPU_PROFILE, "modules": {"vision": {"flops_per_s": 3e9}, "llm": {"flops_per_s": 1.5e9, "tp": 2}},
    }, "profile")
    plain = resolve_job("llava", "tiny").config
    full = resolve_job("llava", "tiny", sets=["train.recompute.llm=full", "train.recompute.vision=full"]).config
    # forward + backward is ~3 forwards; a recomputed forward adds one: between +20% and +40%
    assert 1.2 < _predict(full, profile) / _predict(plain, profile) < 1.4


def _predict(job, profile):
    problem = make_problem(job, machine_from_profile(profile, "test"), 1, 2)
    return evaluate_layout(problem, job.layout, job.train.micro_batch_size, job.train.recompute).step_s


def _parse_profile(text):
    return from_plain(CalibrationProfile, json.loads(text), "profile")


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_table_shows_top_k_gain_and_pruning():
    res = CliRunner().invoke(cli, ["plan", "llava", "--nodes", "4", "--top", "2"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "predicted gain of the best layout over the best homogeneous layout: 1.00x" in out
    assert " 1  " in out and " 2  " in out and " 3  " not in out
    assert "pruned:" in out and REASONS["batch"] in out


def test_cli_help_has_an_example():
    res = CliRunner().invoke(cli, ["plan", "--help"])
    assert res.exit_code == 0 and "Example:" in res.output and "mimo-toolkit plan llava --nodes 4" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "nosuch"], "unknown recipe"),
        (["plan", "llava", "--gpu", "cpu"], "--profile"),
        (["plan", "llava", "--set", "train.nope=1"], "unknown key"),
        (["plan", "llava", "--top", "0"], "--top"),
        (["plan", "llava", "--apply", "x.txt"], ".py"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(args, message):
    proc = subprocess.run([sys.executable, "-c", "from mimo_toolkit.cli import main; main()", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_planning_imports_neither_torch_nor_megatron():
    code = (
        "import sys\n"
        "from mimo_toolkit.cli import main\n"
        "try:\n"
        "    main(['plan', 'llava', '--nodes', '4', '--format', 'json'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'transformer_engine')]\n"
        "assert not heavy, heavy\n"
        "import mimo_toolkit.planner.search, mimo_toolkit.planner.calibration\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_memory_model_sizes_encoders_for_the_most_images_a_sample_carries():
    """Synthetic vision samples alternate 1 and 2 images; the planner's bound must be the
    dataset's own maximum (read from the samples, torch), or a micro-batch of two-image
    samples outgrows the predicted activations (it did: the vision-only rank of
    bench_memory measured 17 MiB per micro-batch for 10 predicted)."""
    from mimo_toolkit.media_counts import max_items_per_sample
    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.runtime.datasets.synthetic import SyntheticDataset

    for seq, expected in ((256, 2), (128, 1)):  # two 64-token images fit in 256 tokens, not in 128
        job = resolve_job("llava", "tiny", sets=[f"train.seq_length={seq}", f"model.llm.max_sequence_length={seq}",
                                                 "model.vision.image_size=64", "model.vision.patch_size=8"]).config
        data = SyntheticDataset(job, num_samples=8)
        seen = max(data.get(i, {"vision"}).media["vision"].shape[0] for i in range(8))
        assert seen == max_items_per_sample(job, "vision") == expected
        p = make_problem(job, builtin_machine("h100"), 1, 1)
        assert p.modules[0].items_per_sample == expected and p.llm.items_per_sample == 1
