"""Writing a chosen layout out: as ``--set`` overrides, or as a preset file.

Both forms say the same thing: the deployment mode, every module's tp/pp/cp/dp/rank_offset/
scalable, the micro-batch size and the cluster shape (nodes, processes and GPUs per node).
The preset file is an ordinary recipe file: it builds the base preset, applies the user's
``--set`` overrides, then sets the layout, so ``mimo-toolkit show FILE.py`` and ``render``
load it like any recipe.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from ..errors import UserError
from .candidate import Candidate
from .plan import Plan


def planned_settings(plan: Plan, candidate: Candidate) -> list[str]:
    """``KEY=VALUE`` overrides that turn the base preset into ``candidate``."""
    language = plan.job.layout.language_module
    layout = candidate.to_layout(language, plan.job.layout.special_token_ids)
    out = [f"layout.mode={candidate.mode}"]
    for name, m in layout.module_parallelisms.items():
        out += [
            f"layout.{name}.tp={m.tp}",
            f"layout.{name}.pp={m.pp}",
            f"layout.{name}.cp={m.cp}",
            f"layout.{name}.dp={m.dp}",
            f"layout.{name}.rank_offset={m.rank_offset}",
            f"layout.{name}.scalable={str(m.scalable).lower()}",
        ]
    out += [f"train.recompute.{name}=full" for name in candidate.recomputed]
    out += [
        f"train.distributed_optimizer={str(bool(plan.problem.assumptions.distributed_optimizer)).lower()}",
        f"train.micro_batch_size={candidate.micro_batch_size}",
        f"cluster.nodes={plan.nodes}",
        f"cluster.procs_per_node={plan.gpus_per_node}",
        f"cluster.gpus_per_node={plan.gpus_per_node if plan.uses_gpus else 0}",
    ]
    return out


def render_overrides(plan: Plan, candidate: Candidate) -> str:
    """One line of ``--set`` options: the user's own, then the plan's."""
    sets = [*plan.request.sets, *planned_settings(plan, candidate)]
    return " ".join(f"--set {shlex.quote(s)}" for s in sets)


_TEMPLATE = '''"""{title}

Written by `{command}`.
Load it like any recipe: `mimo-toolkit show {path}`, `mimo-toolkit render {path}`.
{notes}"""

from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.overrides import apply_overrides
from mimo_toolkit.recipe import Recipe, load_recipe

base = load_recipe({recipe!r})
recipe = Recipe({name!r}, {description!r})

#: The --set overrides given to `mimo-toolkit plan` (applied before the planned layout).
SETS = {sets!r}


@recipe.preset("planned", default=True)
def planned():
    """{summary}"""
    job = base.build({preset!r})
    apply_overrides(job, SETS)
    job.layout = MimoParallelismConfig(
        module_parallelisms={{
{modules}
        }},
        language_module={language!r},
        deployment_mode={mode!r},
        special_token_ids=dict(job.layout.special_token_ids),
    )
    job.train.micro_batch_size = {mbs}
    job.train.recompute.update({recompute!r})
    job.train.distributed_optimizer = {distributed}
    job.cluster.nodes = {nodes}
    job.cluster.procs_per_node = {gpn}
    job.cluster.gpus_per_node = {gpus}
    return job
'''


def _call(obj: object) -> str:
    """``Class(field=value, ...)`` of a dataclass, fields left at their defaults omitted."""
    args = ", ".join(
        f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj) if getattr(obj, f.name) != f.default
    )
    return f"{type(obj).__name__}({args})"


def render_preset(plan: Plan, candidate: Candidate, command: str, path: str) -> str:
    """The text of a recipe file whose default preset is ``candidate`` on the base preset."""
    language = plan.job.layout.language_module
    layout = candidate.to_layout(language, plan.job.layout.special_token_ids)
    modules = "\n".join(f"            {n!r}: {_call(m)}," for n, m in layout.module_parallelisms.items())
    where = f"{plan.nodes} x {plan.gpus_per_node} {plan.machine.name}"
    gain = plan.result.gain
    gain_text = "" if gain is None else (
        " (no homogeneous layout fits)" if gain == float("inf") else f" ({gain:.2f}x the best homogeneous layout)"
    )
    notes = ""
    if candidate.recomputed:
        notes = f"\nThe plan recomputes activations of {', '.join(candidate.recomputed)} (train.recompute).\n"
    return _TEMPLATE.format(
        title=f"{plan.recipe_name}:{plan.preset} planned for {where}: {candidate.mode}, "
        f"predicted {candidate.step_s:.3g} s/step{gain_text}.",
        command=command,
        path=path,
        notes=notes,
        recipe=plan.recipe_spec,
        name=f"{plan.recipe_name}-planned",
        description=f"{plan.recipe_name}:{plan.preset} with the layout chosen by mimo-toolkit plan",
        sets=list(plan.request.sets),
        summary=f"{where}, {candidate.mode}: {candidate.describe()}; micro-batch {candidate.micro_batch_size}.",
        preset=plan.preset,
        modules=modules,
        language=language,
        mode=candidate.mode,
        mbs=candidate.micro_batch_size,
        recompute={name: "full" for name in candidate.recomputed},
        distributed=bool(plan.problem.assumptions.distributed_optimizer),
        nodes=plan.nodes,
        gpn=plan.gpus_per_node,
        gpus=plan.gpus_per_node if plan.uses_gpus else 0,
    )


def write_preset(path: str | Path, text: str) -> Path:
    path = Path(path)
    if path.suffix != ".py":
        raise UserError(f"--apply {path}: the preset file must end in .py (it is a recipe file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
