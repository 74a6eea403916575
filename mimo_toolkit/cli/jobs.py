"""``mimo-toolkit list | status | logs | cancel``: the jobs this toolkit submitted."""

from __future__ import annotations

import sys
import time

import click

from .. import jobs


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include jobs that ended (default: the last 20).")
def list_jobs(show_all: bool) -> None:
    """Jobs submitted with `mimo-toolkit submit`, with their scheduler state and progress.

    \b
    Example:
      mimo-toolkit list
    """
    records = jobs.all_jobs()
    if not show_all:
        records = records[-20:]
    if not records:
        click.echo("no jobs submitted yet (see `mimo-toolkit submit --help`)")
        return
    states = jobs.states(records)
    click.echo(f"{'JOB':<12} {'SCHEDULER':<9} {'STATE':<11} {'STEP':>9} {'LOSS':>8}  {'SUBMITTED':<16} NAME / RUN DIR")
    for rec in records:
        p = jobs.progress(rec)
        step = f"{p['step']}/{p['steps']}" if p["steps"] else str(p["step"])
        loss = f"{p['loss']:.4f}" if p["loss"] is not None else "-"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.submitted)) if rec.submitted else "-"
        click.echo(
            f"{rec.job_id:<12} {rec.scheduler:<9} {states[rec.job_id]:<11} {step:>9} {loss:>8}  {when:<16} "
            f"{rec.job_name}  {rec.run_dir}"
        )


@click.command()
@click.argument("job")
def status(job: str) -> None:
    """Scheduler state, training progress and how the last attempt ended.

    \b
    Example:
      mimo-toolkit status 1234
    """
    rec = jobs.find_job(job)
    p = jobs.progress(rec)
    click.echo(f"job:        {rec.job_id} ({rec.scheduler})  {rec.job_name}  [{rec.recipe}/{rec.preset}]")
    click.echo(f"state:      {jobs.state_of(rec)}")
    click.echo(f"run dir:    {rec.run_dir}")
    click.echo(f"code:       {jobs.code_version(rec)}")
    click.echo(f"progress:   step {p['step']}" + (f"/{p['steps']}" if p["steps"] else "")
               + (f", loss {p['loss']:.4f}" if p["loss"] is not None else ""))
    exit_status = rec.rundir.read_exit_status()
    if exit_status:
        extra = {k: v for k, v in exit_status.items() if k not in ("reason", "time")}
        click.echo(f"last exit:  {exit_status['reason']} {extra if extra else ''}".rstrip())
    latest = rec.rundir.checkpoint_dir / "latest"
    if latest.exists():
        click.echo(f"checkpoint: {latest.read_text().strip()}")


@click.command()
@click.argument("job")
@click.option("--rank", type=int, default=0, show_default=True, help="Whose log to print.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the log grows, until the job ends.")
@click.option("--first-error", is_flag=True, help="The earliest failing rank and its traceback.")
def logs(job: str, rank: int, follow: bool, first_error: bool) -> None:
    """A rank's log, live with --follow, or the first failure with --first-error.

    \b
    Example:
      mimo-toolkit logs 1234 --rank 3 --follow
      mimo-toolkit logs 1234 --first-error
    """
    rec = jobs.find_job(job)
    if first_error:
        err = jobs.first_error(rec)
        if err is None:
            click.echo(f"no rank of job {rec.job_id} failed")
            return
        click.echo(f"rank {err['rank']} failed first" + (f" at step {err['step']}" if err.get("step") else "")
                   + f": {err['error']}")
        if err.get("traceback"):
            click.echo(err["traceback"].rstrip())
        sys.exit(1)
    path = jobs.rank_log(rec, rank)
    if not follow:
        click.echo(path.read_text(errors="replace"), nl=False)
        return
    for line in jobs.follow(path, done=lambda: not jobs.is_active(rec, jobs.state_of(rec))):
        click.echo(line, nl=False)


@click.command()
@click.argument("job")
def cancel(job: str) -> None:
    """Cancel a submitted job (scancel for Slurm, TorchX's cancel for TorchX apps).

    \b
    Example:
      mimo-toolkit cancel 1234
    """
    click.echo(jobs.cancel(jobs.find_job(job)))
