"""``mimo-toolkit submit``: write a job's files and start it (or, with --dry-run, show them)."""

from __future__ import annotations

import click

from .common import Command, force_option, job_options, resolve, scheduler_option, template_dir_option


@click.command(cls=Command)
@job_options
@scheduler_option(("slurm", "torchx", "local"))
@template_dir_option
@force_option
@click.option("--run-dir", metavar="DIR", help="Run directory (default: ./runs/JOB_NAME-YYYYmmdd-HHMMSS).")
@click.option("--dry-run", is_flag=True, help="Print the files and the command; write and run nothing.")
@click.pass_context
def submit(ctx, recipe, preset, nodes, sets, env, job_name, scheduler, template_dir, force, run_dir, dry_run) -> None:
    """Submit RECIPE: slurm runs sbatch, torchx runs torchx.sh, local runs the job here
    under TorchX's local_cwd scheduler with rank-prefixed logs and a progress bar.

    \b
    Example:
      mimo-toolkit submit llava --preset tiny --scheduler local --set train.steps=10
      mimo-toolkit submit llava --preset 4node --scheduler slurm --dry-run
      mimo-toolkit submit llava -p 4node -s slurm --set cluster.account=my-acct
    """
    from .. import launch

    resolved = resolve(recipe, preset, nodes, sets, env, job_name)
    run_dir = run_dir or launch.default_run_dir(resolved.config.job_name)
    if dry_run:
        click.echo(launch.plan(resolved, scheduler, run_dir, template_dir).describe(), nl=False)
        return
    result = launch.submit(resolved, scheduler, run_dir, template_dir, force=force, echo=click.echo)
    if scheduler == "slurm":
        click.echo(result)
        click.echo(f"submitted Slurm job {result}; run dir {launch.RunDir(run_dir).path}", err=True)
    elif scheduler == "local" and result != "SUCCEEDED":
        ctx.exit(1)
