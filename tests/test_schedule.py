"""The step programs under rendezvous semantics (pure Python: no processes, no torch).

``rendezvous.Replay`` runs every rank's step program with unbuffered sends and blocking
collectives, the semantics NCCL imposes once the host synchronises. The schedule must pass
it on every preset and every layout the equivalence tests train; the engine's order before
issue #16 (receive, compute, send, per operation) must fail it where the issue says NCCL
deadlocks. The multi-process tests (test_heterogeneous.py) then run the same programs on
gloo with ``MIMO_P2P_RENDEZVOUS=1``, a real rendezvous.
"""

from __future__ import annotations

import itertools

import pytest
from test_heterogeneous import hetero

from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.recipe import iter_recipes, load_recipe
from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.runtime.train.plan import Boundary, RankPlan, rank_ops
from mimo_toolkit.runtime.train.rendezvous import (
    Replay,
    ScheduleError,
    check_schedule,
    default_programs,
    replay,
    step_programs,
)
from mimo_toolkit.runtime.train.schedule import backward_modules, build_schedule

HOMOGENEOUS_TP1 = ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1"]

#: The layouts of the equivalence tests (test_runtime.py, test_heterogeneous.py).
EQUIVALENCE = [
    ("llava", HOMOGENEOUS_TP1),
    ("llava", ["layout.mode=homogeneous", "layout.llm.tp=2", "layout.vision.tp=2"]),
    ("llava", []),
    ("llava", ["freeze.vision=true", *HOMOGENEOUS_TP1]),
    ("llava", hetero(2, vision="1,1,1,0", llm="1,1,1,1")),
    ("llava", hetero(4, vision="1,1,2,0", llm="2,1,1,2")),
    ("llava", ["train.micro_batch_size=1", *hetero(3, vision="1,1,1,0", llm="1,1,2,1")]),
    ("llava", hetero(3, vision="1,1,1,0", llm="1,2,1,1")),
    ("llava", ["layout.llm.tp=1", "layout.llm.pp=2"]),
    ("multi_encoder", ["layout.mode=homogeneous", "layout.llm.tp=1"]),
    ("multi_encoder", hetero(3, vision="1,1,1,0", audio="1,1,1,1", llm="1,1,1,2")),
    ("llava", ["freeze.vision=true", "freeze.vision_projector=true", *hetero(2, vision="1,1,1,0", llm="1,1,1,1")]),
]


def presets() -> list[tuple[str, str]]:
    """Every built-in recipe's presets."""
    names = [entry.name for entry in iter_recipes() if entry.origin == "built-in"]
    return [(name, preset) for name in names for preset in load_recipe(name).presets]


def _check_job(recipe: str, preset: str | None, sets: list[str]) -> None:
    job = resolve_job(recipe, preset, sets=sets).config
    m = job.train.global_batch_size // (job.train.micro_batch_size * job.layout.language.dp)
    check_schedule(job.layout, m, backward_modules(job))
    check_schedule(job.layout, m, set())  # validation: forward only


@pytest.fixture(scope="module")
def hub_weights(tmp_path_factory) -> str:
    """The pretrained presets (llava stage1/stage2) resolve against hub-shaped checkpoints."""
    from hf_files import write_hub_checkpoints

    return str(write_hub_checkpoints(tmp_path_factory.mktemp("hub") / "weights"))


@pytest.mark.parametrize("recipe,preset", presets())
def test_every_preset_passes_the_rendezvous_replay(recipe, preset, hub_weights, monkeypatch):
    monkeypatch.setenv("MIMO_TOOLKIT_WEIGHTS", hub_weights)
    _check_job(recipe, preset, [])


@pytest.mark.parametrize("recipe,sets", EQUIVALENCE, ids=lambda x: x if isinstance(x, str) else " ".join(x) or "preset")
def test_every_equivalence_layout_passes_the_rendezvous_replay(recipe, sets):
    _check_job(recipe, "tiny", sets)


def _layouts(max_world: int = 8):
    """Small layouts of every mode with one or two encoders: tp, pp, dp and offsets."""
    sizes = [(tp, pp, dp) for tp, pp, dp in itertools.product((1, 2), (1, 2, 3), (1, 2, 4)) if tp * pp * dp <= max_world]
    for encoders in (["vision"], ["vision", "audio"]):
        for lm in sizes:
            for enc in [(tp, 1, dp) for tp, _, dp in sizes]:
                if max(enc[2], lm[2]) % min(enc[2], lm[2]):
                    continue
                world_het = enc[0] * enc[2] * len(encoders) + lm[0] * lm[1] * lm[2]
                if world_het <= max_world:
                    yield _layout("heterogeneous", encoders, enc, lm)
                if enc[0] * enc[2] == lm[0] * lm[1] * lm[2]:
                    yield _layout("colocated", encoders, enc, lm)


def _layout(mode: str, encoders: list[str], enc: tuple, lm: tuple) -> MimoParallelismConfig:
    parts, offset = {}, 0
    for name in encoders:
        parts[name] = ModuleParallelismConfig(tp=enc[0], dp=enc[2],
                                              rank_offset=offset if mode == "heterogeneous" else 0)
        offset += enc[0] * enc[2]
    parts["llm"] = ModuleParallelismConfig(tp=lm[0], pp=lm[1], dp=lm[2],
                                           rank_offset=offset if mode == "heterogeneous" else 0)
    layout = MimoParallelismConfig(module_parallelisms=parts, deployment_mode=mode,
                                   special_token_ids={n: -1 - k for k, n in enumerate(encoders)})
    layout.finalize()
    return layout


def test_small_layouts_of_every_kind_pass():
    """Every small layout (world <= 6; one or two encoders; tp, pp, dp, fan-in and fan-out),
    everything trained with 5 micro-batches, encoders frozen with 2, forward only with 3: the
    placement always completes and both sides agree on the order."""
    layouts = list(_layouts(max_world=6))
    for layout in layouts:
        for m, backward in ((5, {"llm", *layout.encoder_names}), (2, {"llm"}), (3, set())):
            check_schedule(layout, m, backward)
    assert len(layouts) > 150


def old_engine_programs(layout: MimoParallelismConfig, m: int, backward: set[str]) -> dict[int, list]:
    """The order of the engine before issue #16: per operation, each receive (blocking), the
    collectives, then each send, which NCCL completes only when the receiver has posted its
    receive once the host synchronises after the operation."""
    schedule, out = build_schedule(layout, m, backward), {}
    for rank in range(layout.world_size()):
        plan, events = RankPlan(layout, rank, backward), []
        events += plan.step_start()
        for op in rank_ops(schedule, layout, rank):
            events += [Boundary([], [msg], None, op) for msg in plan.receives(op)]
            events += plan.collectives(op)
            events += [Boundary([msg], [], op, None) for msg in plan.sends(op)]
        out[rank] = events + plan.step_end()
    return out


def _layout_of(recipe: str, preset: str, sets=()):
    job = resolve_job(recipe, preset, sets=list(sets)).config
    return job.layout, job.train.global_batch_size // (job.train.micro_batch_size * job.layout.language.dp), backward_modules(job)


@pytest.mark.parametrize("recipe", ["llava", "multi_encoder"])
def test_old_engine_order_deadlocks_on_the_4node_presets(recipe):
    """Issue #16: vision in F1's send, the LLM in B0's send, each waiting for the other."""
    layout, m, backward = _layout_of(recipe, "4node")
    with pytest.raises(ScheduleError) as err:
        Replay(old_engine_programs(layout, m, backward)).run()
    report = str(err.value)
    assert "in a cycle of" in report, report
    assert "rank 0 at boundary after F(vision,1): sending bridge_fwd mb1 0->8" in report, report
    assert "rank 8 at boundary after B(llm,0): sending bridge_bwd mb0 8->0" in report, report
    step_programs(layout, m, backward)  # the fixed placement passes


@pytest.mark.parametrize("mode_sets", [["layout.llm.tp=1", "layout.llm.pp=2"], hetero(3, vision="1,1,1,0", llm="1,2,1,1")])
def test_old_engine_order_deadlocks_with_a_pipelined_llm(mode_sets):
    layout, m, backward = _layout_of("llava", "tiny", mode_sets)
    lm0, lm1 = layout.language.rank_at(pp=0), layout.language.rank_at(pp=1)
    with pytest.raises(ScheduleError) as err:
        Replay(old_engine_programs(layout, m, backward)).run()
    report = str(err.value)
    assert f"sending pipe_fwd mb1 {lm0}->{lm1}" in report and f"sending pipe_bwd mb0 {lm1}->{lm0}" in report, report
    step_programs(layout, m, backward)


def test_gang_operations_pull_receives_forward():
    """Colocated LLM pp2: the encoder's backward (a collective over both ranks) sits between
    stage 0's send of micro-batch 2 and stage 1's send of micro-batch 1's gradient. The
    default placement (receives right before their operation) deadlocks there; the placed
    program receives each message at that same boundary, like megatron-core's
    send_forward_recv_backward."""
    layout, m, backward = _layout_of("llava", "tiny", ["layout.llm.tp=1", "layout.llm.pp=2"])
    with pytest.raises(ScheduleError, match="deadlock"):
        replay(default_programs(layout, m, backward))
    programs = step_programs(layout, m, backward)
    boundary = next(b for b in programs[0].boundaries if any(str(s) == "pipe_fwd mb2 0->1" for s in b.sends))
    assert [str(r) for r in boundary.receives] == ["pipe_bwd mb1 1->0"]
    assert str(boundary.before) == "B(vision,0)"


def test_replay_catches_disagreeing_programs():
    """Two gang members running a collective in different orders, and receives posted in
    another order than the sends (NCCL pairs by order, not tag), are errors, not passes."""
    layout, m, backward = _layout_of("llava", "tiny", ["layout.mode=homogeneous", "layout.llm.tp=2", "layout.vision.tp=2"])
    programs = {rank: p.events() for rank, p in default_programs(layout, m, backward).items()}
    a, b = [i for i, e in enumerate(programs[1]) if not isinstance(e, Boundary) and e.ranks == (0, 1) and e.op][:2]
    assert programs[1][a].op != programs[1][b].op
    programs[1][a], programs[1][b] = programs[1][b], programs[1][a]
    with pytest.raises(ScheduleError, match="differs between ranks"):
        Replay(programs)

    layout, m, backward = _layout_of("llava", "tiny", hetero(2, vision="1,1,1,0", llm="1,1,1,1"))
    programs = step_programs(layout, m, backward)
    receiving = [b for b in programs[1].boundaries if b.receives]
    receiving[0].receives, receiving[1].receives = receiving[1].receives, receiving[0].receives
    with pytest.raises(ScheduleError, match="message order differs|deadlock"):
        replay(programs)


def test_receives_are_posted_one_operation_early_where_the_replay_allows_it():
    """Issue #13: the LLM's receive of micro-batch 1's embeddings goes to the boundary before
    B(llm,0), so the transfer runs during that backward; a pipelined LLM keeps the placement
    right before each operation (the early one would deadlock there)."""
    layout, m, backward = _layout_of("llava", "tiny", hetero(2, vision="1,1,1,0", llm="1,1,1,1"))
    llm = step_programs(layout, m, backward)[1]
    boundary = next(b for b in llm.boundaries if any(str(r) == "bridge_fwd mb1 0->1" for r in b.receives))
    assert str(boundary.before) == "B(llm,0)", boundary
    layout, m, backward = _layout_of("llava", "tiny", ["layout.llm.tp=1", "layout.llm.pp=2"])
    with pytest.raises(ScheduleError):
        replay(default_programs(layout, m, backward, receives_ahead=1), repair=True)
    step_programs(layout, m, backward)  # falls back and completes
