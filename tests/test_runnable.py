"""Validated means runnable: a layout `show` accepts is one the runtime builds and trains; one
it refuses is refused with one line and exit 2. Random layouts of the tiny recipes (hypothesis,
derandomized so CI sees the same ones), and a config error found inside the job.
"""

from __future__ import annotations

import json
import math

import pytest
from cli_support import run_cli
from dist_support import run_job
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mimo_toolkit.errors import UserError
from mimo_toolkit.resolve import resolve_job

#: The tiny recipes and their modules (every module of a tiny preset trains).
RECIPES = {"llava": ("vision", "llm"), "multi_encoder": ("vision", "audio", "llm"), "big_encoder": ("vision", "llm")}


@st.composite
def layouts(draw) -> tuple[str, list[str]]:
    """(recipe, --set overrides): a deployment mode, every module's tp/pp/cp/dp (heterogeneous:
    rank offsets that mostly tile the ranks), the node shape and the micro-batch. Drawn near
    valid layouts (homogeneous modules mostly share a shape, dp mostly derived or tiling) so
    that about a third are accepted; the rest break one rule or another."""
    recipe = draw(st.sampled_from(sorted(RECIPES)))
    mode = draw(st.sampled_from(["colocated", "homogeneous", "heterogeneous"]))
    hetero = mode == "heterogeneous"
    shared = (draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 1, 2])))
    sets, offset = [f"layout.mode={mode}"], 0
    for name in RECIPES[recipe]:
        encoder = name != "llm"
        tp, pp = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 1, 1, 2] if encoder else [1, 2]))
        if mode == "homogeneous" and draw(st.integers(0, 4)):
            tp, pp = shared
        cp = draw(st.sampled_from([1] * 7 + [2]))
        dp = draw(st.sampled_from([1, 2, 4] if hetero else [None, None, None, 1, 2]))
        sets += [f"layout.{name}.tp={tp}", f"layout.{name}.pp={pp}", f"layout.{name}.cp={cp}",
                 f"layout.{name}.dp={'none' if dp is None else dp}"]
        if hetero:
            sets.append(f"layout.{name}.rank_offset={draw(st.sampled_from([offset] * 5 + [0, 1]))}")
            offset += tp * pp * cp * (dp or 1)
    procs = draw(st.sampled_from([1, 2, 3, 4]))
    if hetero:  # one node holding every rank, or some node size
        procs = draw(st.sampled_from([offset, offset, procs]))
    nodes = "none" if hetero else draw(st.sampled_from(["1", "1", "2"]))
    mbs = draw(st.sampled_from([1, 2, 4]))
    return recipe, sets + [f"cluster.nodes={nodes}", f"cluster.procs_per_node={procs}", f"train.micro_batch_size={mbs}"]


def show(recipe: str, sets: list[str]):
    return run_cli(["show", recipe, "-p", "tiny", "--rank-map", "none", *(f"--set={s}" for s in sets)])


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(layouts())
def test_show_refuses_in_one_line_or_the_runtime_can_build_it(layout):
    """Refused: exit 2, one line, nothing on stdout. Accepted: megatron-core's own config
    validators accept every module's TransformerConfig, and the schedule gives every rank its
    operations (the simulation every rank runs before the first step)."""
    import torch

    from mimo_toolkit.runtime.model.specs import mimo_specs
    from mimo_toolkit.runtime.train.schedule import build_schedule, roles_of_rank

    recipe, sets = layout
    run = show(recipe, sets)
    if run.code == 2:
        assert run.out == "" and run.err.startswith("mimo-toolkit: error: ") and run.err.count("\n") == 1, run.err
        return
    assert run.code == 0, run.err
    resolved = resolve_job(recipe, "tiny", sets=sets)
    job, lay = resolved.config, resolved.config.layout
    mimo_specs(job, "local", torch.float32)  # TransformerConfig.__post_init__ checks tp/pp/heads itself
    micro = job.train.global_batch_size // (job.train.micro_batch_size * lay.language.dp)
    lists = build_schedule(lay, micro, set(job.model))
    for rank in range(resolved.world_size):
        ops = lists[roles_of_rank(lay, rank)]
        assert {op.module for op in ops} == set(lay.modules_of_rank(rank))


def _layout(recipe: str, mode: str, modules: dict[str, tuple[int, int, int, int]], procs: int, mbs: int):
    """An explicit layout in the strategy's form: module -> (tp, pp, dp, rank_offset)."""
    sets = [f"layout.mode={mode}"]
    for name, (tp, pp, dp, offset) in modules.items():
        sets += [f"layout.{name}.tp={tp}", f"layout.{name}.pp={pp}", f"layout.{name}.dp={dp}",
                 f"layout.{name}.rank_offset={offset}"]
    nodes = "none" if mode == "heterogeneous" else "1"
    return recipe, sets + [f"cluster.nodes={nodes}", f"cluster.procs_per_node={procs}", f"train.micro_batch_size={mbs}"]


#: Found by this test: TP4 over a 320-id vocabulary (padded to 512) gave the last TP rank only
#: padding, and the loss was nan (runtime/parallel/loss.py).
TP4_PADDED_VOCAB = _layout("big_encoder", "homogeneous", {"vision": (4, 1, 1, 0), "llm": (4, 1, 1, 0)}, 4, 4)
#: Every module on its own ranks, the LLM pipelined.
HETEROGENEOUS_PP2 = _layout("multi_encoder", "heterogeneous",
                            {"vision": (1, 1, 1, 0), "audio": (1, 1, 1, 1), "llm": (1, 2, 1, 2)}, 4, 2)


@pytest.mark.slow
@settings(max_examples=1, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@example(TP4_PADDED_VOCAB)
@example(HETEROGENEOUS_PP2)
@given(layouts())
def test_accepted_layouts_train_a_step(tmp_path_factory, layout):
    """Every layout `show` accepts on <= 4 ranks trains one step on CPU (torchrun, gloo) to a
    finite loss: 2 explicit layouts and 1 drawn one (CI time: each is a 4-process job)."""
    recipe, sets = layout
    run = show(recipe, sets)
    assume(run.code == 0)
    assume(resolve_job(recipe, "tiny", sets=sets).world_size <= 4)
    job = run_job(tmp_path_factory.mktemp("layout"), recipe, sets=[*sets, "train.steps=1"])
    assert job.returncode == 0, f"{recipe} {sets}:\n{job.output[-4000:]}"
    assert len(job.metrics) == 1 and math.isfinite(job.losses[0])


@pytest.mark.slow
def test_a_config_error_found_in_the_job_is_one_line_and_exit_2(tmp_path):
    """A data file that passes the render-time look but has no usable sample (its image is
    missing): every rank says so in one line and exits 2, without a traceback (torchrun, the
    launcher, still prints its own report of the failed workers)."""
    data = tmp_path / "train.json"
    record = {"id": "a", "image": "missing.png",
              "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "red"}]}
    data.write_text(json.dumps([record]))
    run = run_job(tmp_path / "run", "llava", sets=["data.source=llava", f"data.path={data}", "train.steps=1"])
    assert run.returncode != 0 and "(exitcode: 2)" in run.output, run.output[-3000:]
    message = f"mimo-toolkit: error: {data}: no usable samples (1 bad sample(s): sample a: missing file "
    for rank in range(2):
        log = run.run_dir.rank_log(rank).read_text()
        errors = [line for line in log.splitlines() if line.startswith("mimo-toolkit: error: ")]
        assert len(errors) == 1 and errors[0].startswith(message) and "Traceback" not in log, log[-3000:]
    status = run.run_dir.read_exit_status()
    assert status["reason"] == "failed" and status["message"].startswith(f"DataError: {data}: no usable samples")


def test_the_provider_refuses_with_the_same_rule(monkeypatch):
    """The rule the provider applies in the job is the one `show` applies (one function):
    a layout edited past validation gets the same message from ``finalize``."""
    from mimo_toolkit.runtime.model.provider import MimoModelProvider

    with pytest.raises(UserError) as shown:
        resolve_job("llava", "tiny", sets=["layout.vision.pp=2"])
    job = resolve_job("llava", "tiny").config
    job.layout.module_parallelisms["vision"].pp, job.layout.module_parallelisms["vision"].dp = 2, 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError) as in_job:
        MimoModelProvider.from_job(job).finalize()
    assert str(in_job.value) == str(shown.value)
