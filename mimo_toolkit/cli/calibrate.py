"""``mimo-toolkit calibrate``: measure this machine and write a calibration profile."""

from __future__ import annotations

from pathlib import Path

import click

from .common import Command


@click.command("calibrate", cls=Command)
@click.argument("recipe")
@click.option("--preset", "-p", metavar="NAME", default="tiny", show_default=True, help="Preset of the recipe.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config field (e.g. the layout to time), as for train and plan.")
@click.option("--steps", type=click.IntRange(min=4), default=10, show_default=True,
              help="Steps per timed run (the first 2 are warm-up).")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs at each of the two micro-batch sizes (their median is fitted).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads per process (MIMO_CPU_THREADS); the profile holds for this count.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="calibration.json", show_default=True,
              help="Where to write the profile.")
def calibrate(recipe: str, preset: str, sets: tuple[str, ...], steps: int, repeats: int, threads: int,
              out: str) -> None:
    """Time RECIPE's job on this machine's CPU and write a calibration profile for `plan --profile`.

    Runs the job (its layout, or the one --set chooses) for --steps steps at its micro-batch
    size and at another one, --repeats times each, times gloo all-reduces between two
    processes, and fits per module kind a FLOP rate and a fixed cost per micro-batch, the
    collective bandwidth and latency, and the step's remaining overhead (docs/planner.md,
    "Calibration"). About 45 s for a tiny preset; it waits for a quiet machine and repeats a
    run that other processes disturbed.

    \b
    Example:
      mimo-toolkit calibrate llava --set layout.mode=homogeneous --set layout.llm.tp=1 \\
          --set cluster.procs_per_node=1 --out calib.json
      mimo-toolkit plan llava --preset tiny --gpu cpu --profile calib.json
    """
    from ..planner.measure import calibrate as measure

    def echo(line: str) -> None:
        click.echo(line, err=True)

    result = measure(recipe, preset, sets, steps=steps, repeats=repeats, threads=threads, echo=echo)
    Path(out).write_text(result.profile.to_json())
    profile = result.profile
    for kind, rate in sorted(profile.modules.items()):
        click.echo(f"{kind}: {rate.flops_per_s / 1e9:.3g} GFLOP/s per process at tp{rate.tp}, "
                   f"{rate.seconds_per_micro_batch * 1e3:.2f} ms fixed per micro-batch")
    comm = profile.comm
    click.echo(f"gloo all-reduce: {comm.intra_node_bytes_per_s / 1e9:.2f} GB/s bus bandwidth, "
               f"{comm.latency_s * 1e6:.0f} us per hop; step overhead {profile.step_overhead_s * 1e3:.1f} ms")
    click.echo(f"wrote {out} in {result.seconds:.0f} s (other processes' CPU share during the runs: "
               f"{profile.provenance['foreign_load']})")
