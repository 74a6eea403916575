"""``mimo-toolkit submit``: write a job's files and start it (or, with --dry-run, show them)."""

from __future__ import annotations

import click

from .common import Command, force_option, job_options, resolve, scheduler_option, template_dir_option


@click.command(cls=Command)
@job_options
@scheduler_option
@template_dir_option
@force_option
@click.option("--run-dir", metavar="DIR", help="Run directory (default: ./runs/JOB_NAME-YYYYmmdd-HHMMSS).")
@click.option("--dry-run", is_flag=True, help="Print the files and the command; write and run nothing.")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2",
              help="Submit the cross product of these values (repeatable): one Slurm job array, or local runs in turn.")
@click.option("--sweep-throttle", type=int, metavar="N", help="At most N elements of the job array run at once.")
@click.pass_context
def submit(ctx, recipe, preset, nodes, sets, env, job_name, scheduler, template_dir, force, run_dir, dry_run,
           sweeps, sweep_throttle) -> None:
    """Submit RECIPE: slurm runs sbatch, torchx runs torchx.sh, local runs the job here
    under TorchX's local_cwd scheduler with rank-prefixed logs and a progress bar, and
    exits with the job's code (docs/cli.md: 1 failed, 3 cancelled, 75 preempted).

    Prints the job id (Slurm job id, TorchX app handle) as the last line on stdout.

    \b
    Example:
      mimo-toolkit submit llava --preset tiny --scheduler local --set train.steps=10
      mimo-toolkit submit llava --preset 4node --scheduler slurm --dry-run
      mimo-toolkit submit llava -p 4node -s slurm --set cluster.account=my-acct
      mimo-toolkit submit llava -p tiny -s slurm --sweep train.lr=1e-3,5e-4 --sweep train.seed=1,2
    """
    from .. import launch
    from ..sweep import expand

    if sweeps:
        elements = expand(sweeps, lambda extra: resolve(recipe, preset, nodes, (*sets, *extra), env, job_name,
                                                        scheduler=scheduler))
        run_dir = run_dir or launch.default_run_dir(elements[0].resolved.config.job_name)
        request = launch.materialize_sweep(elements, scheduler, run_dir, template_dir, sweep_throttle)
    else:
        resolved = resolve(recipe, preset, nodes, sets, env, job_name, scheduler=scheduler)
        run_dir = run_dir or launch.default_run_dir(resolved.config.job_name)
        request = launch.materialize(resolved, scheduler, run_dir, template_dir)
    if dry_run:
        click.echo(request.describe(), nl=False)
        return
    if sweeps:
        submission = launch.submit_sweep(request, force=force, echo=click.echo)
    else:
        submission = launch.submit(request, resolved, force=force, echo=click.echo)
    click.echo(submission.summary, err=True)
    click.echo(submission.job_id)
    ctx.exit(submission.exit_code)  # mimo_toolkit.cli.main turns it into the process's exit code
