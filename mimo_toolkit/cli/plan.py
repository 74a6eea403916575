"""``mimo-toolkit plan``: choose each module's GPUs and TP/CP/PP/DP from a cost model."""

from __future__ import annotations

import shlex

import click

from ..planner.apply import render_overrides, render_preset, write_preset
from ..planner.plan import PlanRequest, make_plan
from ..planner.report import render_json, render_table
from ..planner.workload import Assumptions
from .common import Command


def _command(req: PlanRequest, apply_to: str | None) -> str:
    """The command line that reproduces a plan (written into the preset file)."""
    args = ["mimo-toolkit", "plan", req.recipe]
    for flag, value in (("--preset", req.preset), ("--nodes", req.nodes), ("--gpus-per-node", req.gpus_per_node),
                        ("--gpu", req.gpu), ("--profile", req.profile), ("--apply", apply_to)):
        if value is not None:
            args += [flag, str(value)]
    for s in req.sets:
        args += ["--set", s]
    return shlex.join(args)


@click.command("plan", cls=Command)
@click.argument("recipe")
@click.option("--preset", "-p", metavar="NAME", help="Preset of the recipe (default: the recipe's default preset).")
@click.option("--nodes", "-n", type=int, metavar="N", help="Nodes to plan for (default: the preset's).")
@click.option("--gpus-per-node", type=int, help="GPUs (CPU: processes) per node (default: the preset's).")
@click.option("--gpu", type=click.Choice(["h100", "h200", "a100", "cpu"]),
              help="Device kind (default: h100, or cpu for a CPU preset; cpu needs --profile).")
@click.option("--top", type=int, default=3, show_default=True, help="How many layouts to list.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config field before planning.")
@click.option("--profile", type=click.Path(dir_okay=False), help="Calibration profile (JSON) with measured rates.")
@click.option("--apply", "apply_to", type=click.Path(dir_okay=False),
              help="Write the best layout as a preset file (a recipe .py loadable by show/render).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "overrides"]), default="table",
              show_default=True, help="overrides: print the best layout as --set options.")
@click.option("--recompute", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="Full activation recomputation: where memory needs it, never, or always.")
@click.option("--distributed-optimizer/--no-distributed-optimizer", default=None,
              help="Shard optimizer states over data-parallel ranks (default: the job's "
                   "train.distributed_optimizer, on with GPUs).")
@click.option("--overlap-grad-reduce/--no-overlap-grad-reduce", default=False, show_default=True,
              help="Hide gradient reduction behind the last micro-batch's backward.")
def plan(recipe: str, preset: str | None, nodes: int | None, gpus_per_node: int | None, gpu: str | None,
         top: int, sets: tuple[str, ...], profile: str | None, apply_to: str | None, fmt: str,
         recompute: str, distributed_optimizer: bool | None, overlap_grad_reduce: bool) -> None:
    """Choose each module's GPUs and TP/CP/PP/DP for RECIPE from a cost and memory model.

    Searches homogeneous, colocated and heterogeneous layouts that pass the toolkit's own
    validation, lists the fastest with predicted step time, tokens/s, MFU and memory per
    GPU, says why the rest were pruned, and prints the predicted gain over the best
    homogeneous layout. Rates are published peaks times assumed efficiencies unless
    --profile gives measured ones (docs/planner.md).

    \b
    Example:
      mimo-toolkit plan llava --nodes 4
      mimo-toolkit plan big_encoder --nodes 4 --top 5 --apply planned.py
      mimo-toolkit show planned.py
      mimo-toolkit plan llava --preset tiny --gpu cpu --profile calib.json --format overrides
    """
    req = PlanRequest(
        recipe=recipe, preset=preset, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu, top=top,
        sets=tuple(sets), profile=profile,
        assumptions=Assumptions(distributed_optimizer=distributed_optimizer,
                                overlap_grad_reduce=overlap_grad_reduce, recompute=recompute),  # type: ignore[arg-type]
    )
    result = make_plan(req)
    if apply_to is not None:
        path = write_preset(apply_to, render_preset(result, result.best, _command(req, apply_to), apply_to))
        click.echo(f"wrote {path} (mimo-toolkit show {path})", err=True)
    if fmt == "overrides":
        click.echo(render_overrides(result, result.best))
    elif fmt == "json":
        click.echo(render_json(result))
    else:
        click.echo(render_table(result))
