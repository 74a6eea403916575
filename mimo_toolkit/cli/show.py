"""``mimo-toolkit show``: a job's layout table, world size, freezing, batch and rank map.

The rank map is collapsed by default into runs of consecutive ranks that take part in the
same modules, with each module's coordinate ranges, so a 512-node job prints a handful of
lines; ``--rank-map full`` prints one line per rank.
"""

from __future__ import annotations

import click

from .common import Command, job_options, resolve


@click.command(cls=Command)
@job_options
@click.option("--config", "show_config", is_flag=True, help="Print the resolved config (the job.json a run reads).")
@click.option(
    "--rank-map",
    type=click.Choice(["compact", "full", "none"]),
    default="compact",
    show_default=True,
    help="compact: runs of ranks with the same modules; full: one line per rank.",
)
def show(recipe, preset, nodes, sets, env, job_name, show_config, rank_map) -> None:
    """Show the parallel layout of RECIPE: modules, world size, freezing and rank map.

    \b
    Example:
      mimo-toolkit show llava --preset 4node
      mimo-toolkit show llava --preset 4node --nodes 8 --set layout.llm.tp=8
      mimo-toolkit show multi_encoder --preset tiny --config
    """
    resolved = resolve(recipe, preset, nodes, sets, env, job_name)
    if show_config:
        from ..launch import manifest_text

        click.echo(manifest_text(resolved), nl=False)
        return
    click.echo("\n".join(summary(resolved, rank_map)))


def summary(resolved, rank_map: str = "compact") -> list[str]:
    """The lines ``show`` prints."""
    cfg = resolved.config
    layout = cfg.layout
    ppn = resolved.procs_per_node
    gpus = cfg.cluster.gpus_per_node
    lines = [
        f"{cfg.recipe}/{cfg.preset}: {layout.deployment_mode} layout, config {cfg.config_hash()}",
        f"world size {resolved.world_size} = {resolved.nodes} node(s) x {ppn} process(es) per node"
        + (f", {gpus} GPU(s) per node" if gpus else ", CPU only (gloo)"),
        "",
    ]
    rows = [("module", "tp", "pp", "cp", "dp", "ranks", "nodes", "training")]
    for name, m in layout.module_parallelisms.items():
        first, last = m.rank_offset, m.rank_offset + m.size - 1
        rows.append((
            name, str(m.tp), str(m.pp), str(m.cp), str(m.dp),
            _span(first, last), _span(first // ppn, last // ppn), _training(cfg, name),
        ))  # fmt: skip
    lines += _table(rows)
    lm = layout.language
    accumulation = cfg.train.global_batch_size // (cfg.train.micro_batch_size * lm.dp)
    lines += [
        "",
        f"batch: global {cfg.train.global_batch_size} = micro {cfg.train.micro_batch_size} x "
        f"{layout.language_module} dp {lm.dp} x {accumulation} accumulation step(s); {cfg.train.steps} steps",
    ]
    if rank_map == "compact":
        lines += ["", "rank map (runs of ranks in the same modules; --rank-map full lists every rank):"]
        lines += _table(_compact_rows(resolved), indent="  ")
    elif rank_map == "full":
        lines += ["", "rank map:"]
        lines += _table(_full_rows(resolved), indent="  ")
    return lines


def _training(cfg, name: str) -> str:
    state = "frozen" if cfg.is_frozen(name) else "trains"
    if name == cfg.layout.language_module:
        return state
    projector = "frozen" if cfg.is_frozen(f"{name}_projector") else "trains"
    return f"encoder {state}, projector {projector}"


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _coords(coords: list[dict[str, int]]) -> str:
    parts = []
    for dim in ("tp", "cp", "dp", "pp"):
        low, high = min(c[dim] for c in coords), max(c[dim] for c in coords)
        if high > 0 or dim == "dp":
            parts.append(f"{dim} {_span(low, high)}")
    return " ".join(parts)


def _compact_rows(resolved) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("ranks", "nodes", "modules")]
    ranks = resolved.rank_map
    start = 0
    for i in range(1, len(ranks) + 1):
        if i < len(ranks) and ranks[i].modules.keys() == ranks[start].modules.keys():
            continue
        run = ranks[start:i]
        modules = "; ".join(f"{name} {_coords([r.modules[name] for r in run])}" for name in run[0].modules)
        rows.append((_span(run[0].rank, run[-1].rank), _span(run[0].node, run[-1].node), modules))
        start = i
    return rows


def _full_rows(resolved) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("rank", "node", "local", "modules")]
    for r in resolved.rank_map:
        modules = "; ".join(
            f"{name} " + " ".join(f"{dim} {c[dim]}" for dim in ("tp", "cp", "dp", "pp")) for name, c in r.modules.items()
        )
        rows.append((str(r.rank), str(r.node), str(r.local_rank), modules))
    return rows


def _table(rows: list[tuple[str, ...]], indent: str = "") -> list[str]:
    """Text columns under a header row; all-number columns right-aligned, the last unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = [all(row[i].isdigit() for row in rows[1:]) for i in range(len(widths))]
    out = []
    for row in rows:
        cells = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)]
        cells[-1] = row[-1]
        out.append(indent + "  ".join(cells).rstrip())
    return out
