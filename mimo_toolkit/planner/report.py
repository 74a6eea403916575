"""Rendering a plan: a table for people, JSON for tools. Pure functions (plan -> text)."""

from __future__ import annotations

import json
import math

from .apply import planned_settings
from .candidate import Candidate
from .cost import MODES
from .plan import Plan
from .rules import REASONS


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def gain_text(plan: Plan) -> str:
    gain = plan.result.gain
    if gain is None:
        return "n/a"
    if math.isinf(gain):
        shared = plan.result.shared_shapes
        why = plan.result.log.by_reason("homogeneous").most_common(2)
        reasons = "; ".join(f"{REASONS[k]}: {n:,}" for k, n in why)
        if not shared:
            return "no homogeneous layout exists (the modules share no tp/pp shape)"
        return (f"no homogeneous layout is valid and fits (the modules share only {', '.join(shared)}; "
                f"pruned: {reasons})")
    return f"{gain:.2f}x"


def _row(i: int, c: Candidate) -> str:
    recompute = ",".join(c.recomputed) or "-"
    return (
        f"{i:>2}  {c.mode:<13} {c.step_s:>8.3f} {_rate(c.tokens_per_s):>9} {_pct(c.mfu):>6} "
        f"{c.memory_gib:>7.3g} {c.micro_batch_size:>4}  {recompute:<10} {c.describe()}"
    )


def render_table(plan: Plan) -> str:
    """The human-readable plan."""
    p, r = plan.problem, plan.result
    a = p.assumptions
    lines = [
        f"plan for {plan.recipe_name}:{plan.preset} on {plan.nodes} x {plan.gpus_per_node} {plan.machine.name} "
        f"({p.world} devices): global batch {p.global_batch} x {p.seq_length} tokens, {p.precision}",
        f"rates: {plan.machine.source}; "
        f"{'distributed' if a.distributed_optimizer else 'replicated'} optimizer, "
        f"{'overlapped' if a.overlap_grad_reduce else 'exposed'} gradient reduction, recompute {a.recompute}",
        "",
        f" #  {'mode':<13} {'step s':>8} {'tokens/s':>9} {'MFU':>6} {'GiB/GPU':>7} {'mbs':>4}  "
        f"{'recompute':<10} layout",
    ]
    lines += [_row(i, c) for i, c in enumerate(r.top, 1)]
    lines.append("")
    best_step = r.top[0].step_s
    per_mode = []
    for mode in MODES:
        c = r.best.get(mode)
        per_mode.append(f"{mode} {c.step_s:.3f} s ({c.step_s / best_step - 1:+.1%})" if c else f"{mode}: none valid")
    lines.append("best per mode: " + " | ".join(per_mode))
    lines.append(f"predicted gain of the best layout over the best homogeneous layout: {gain_text(plan)}")
    if plan.current is not None:
        cur = plan.current
        lines.append(
            f"preset {plan.preset}'s own layout on {plan.nodes} node(s) ({cur.mode}: {cur.describe()}): "
            f"{cur.step_s:.3f} s/step; the best is {cur.step_s / best_step:.2f}x faster"
        )
    log = r.log
    pruned = log.by_reason()
    lines.append(
        f"searched {log.considered:,} layouts in {r.seconds:.2f} s (micro-batch sizes "
        f"{', '.join(map(str, r.micro_batch_sizes))}): {log.evaluated:,} estimated, "
        f"{sum(pruned.values()):,} pruned:"
    )
    lines += [f"  {REASONS[k]}: {n:,}" for k, n in pruned.most_common()]
    if log.shapes:
        shapes = "; ".join(f"{REASONS[k]}: {n}" for k, n in log.shapes.most_common())
        lines.append(f"module shapes ruled out first: {shapes}")
    if log.rejections:
        lines.append("rejected by validation: " + "; ".join(log.rejections[:3]))
    return "\n".join(lines)


def candidate_dict(c: Candidate) -> dict:
    return {
        "mode": c.mode,
        "step_s": c.step_s,
        "tokens_per_s": c.tokens_per_s,
        "mfu": c.mfu,
        "memory_gib_per_gpu": c.memory_gib,
        "micro_batch_size": c.micro_batch_size,
        "modules": [
            {"name": p.name, "tp": p.tp, "cp": p.cp, "pp": p.pp, "dp": p.dp, "rank_offset": p.rank_offset,
             "recompute": p.recompute}
            for p in c.placements
        ],
        "breakdown": c.breakdown,
    }


def render_json(plan: Plan) -> str:
    """The plan as JSON (for tools and notebooks)."""
    p, r, m = plan.problem, plan.result, plan.machine
    gain = r.gain
    data = {
        "recipe": plan.recipe_name,
        "preset": plan.preset,
        "nodes": plan.nodes,
        "gpus_per_node": plan.gpus_per_node,
        "machine": {"name": m.name, "source": m.source, "peak_flops": m.peak_flops, "memory_gib": m.memory_gib},
        "assumptions": {"distributed_optimizer": p.assumptions.distributed_optimizer,
                        "overlap_grad_reduce": p.assumptions.overlap_grad_reduce,
                        "recompute": p.assumptions.recompute},
        "global_batch_size": p.global_batch,
        "seq_length": p.seq_length,
        "precision": p.precision,
        "top": [candidate_dict(c) for c in r.top],
        "best_by_mode": {mode: candidate_dict(c) for mode, c in r.best.items()},
        "gain_over_homogeneous": None if gain is None or math.isinf(gain) else gain,
        "gain_note": gain_text(plan),
        "preset_layout": candidate_dict(plan.current) if plan.current else None,
        "overrides": planned_settings(plan, r.top[0]),
        "search": {
            "seconds": r.seconds,
            "considered": r.log.considered,
            "evaluated": r.log.evaluated,
            "pruned": dict(r.log.by_reason()),
            "pruned_by_mode": {mode: dict(r.log.by_reason(mode)) for mode in MODES},
            "module_shapes_pruned": dict(r.log.shapes),
            "micro_batch_sizes": list(r.micro_batch_sizes),
            "rejections": r.log.rejections,
        },
    }
    return json.dumps(data, indent=2)
