"""``mimo-toolkit render``: write a job's launch files into a run directory."""

from __future__ import annotations

import click

from .common import Command, force_option, job_options, resolve, scheduler_option, template_dir_option


@click.command(cls=Command)
@job_options
@scheduler_option
@template_dir_option
@force_option
@click.option("-o", "--output-dir", "run_dir", required=True, metavar="DIR", help="The run directory to write.")
def render(recipe, preset, nodes, sets, env, job_name, scheduler, template_dir, force, run_dir) -> None:
    """Write the launch files of RECIPE into the run directory DIR and print their paths.

    slurm: DIR/job.json and DIR/launch/job.sbatch (submit with sbatch).
    torchx: DIR/job.json, DIR/launch/torchx.sh and DIR/launch/.torchxconfig (run torchx.sh).
    local: DIR/job.json (`mimo-toolkit submit -s local` runs it).

    \b
    Example:
      mimo-toolkit render llava --preset 4node --scheduler slurm -o runs/llava-4node
      mimo-toolkit render llava -p 4node -s torchx --set cluster.partition=batch -o runs/x
    """
    from ..launch import write_job

    resolved = resolve(recipe, preset, nodes, sets, env, job_name, scheduler=scheduler)
    for path in write_job(resolved, scheduler, run_dir, template_dir, force=force):
        click.echo(path)
