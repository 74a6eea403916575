"""``mimo-toolkit list | status | logs | cancel``: the jobs this toolkit submitted."""

from __future__ import annotations

import sys
import time

import click

from .. import jobs
from ..errors import UserError


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include jobs that ended (default: the last 20).")
def list_jobs(show_all: bool) -> None:
    """Jobs submitted with `mimo-toolkit submit` as an aligned table: scheduler state and
    progress; a sweep's elements are listed under its array id.

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
    rows = [["JOB", "SCHEDULER", "STATE", "STEP", "LOSS", "SUBMITTED", "NAME", "RUN DIR"]]
    shown_arrays: set[str] = set()
    for rec in records:
        if rec.array_id and rec.array_id not in shown_arrays:
            shown_arrays.add(rec.array_id)
            members = [r for r in records if r.array_id == rec.array_id]
            counts = _counts(states[r.job_id] for r in members)
            rows.append([rec.array_id, rec.scheduler, counts, "", "", _when(rec), rec.job_name,
                         f"sweep of {len(members)}: {_common_dir(members)}"])
        rows.append(_row(rec, states[rec.job_id], indent="  " if rec.array_id else ""))
    for line in jobs.table(rows, right={3, 4}):
        click.echo(line)


def _row(rec: jobs.JobRecord, state: str, indent: str = "") -> list[str]:
    p = jobs.progress(rec)
    step = f"{p['step']}/{p['steps']}" if p["steps"] else str(p["step"])
    loss = f"{p['loss']:.4f}" if p["loss"] is not None else "-"
    return [indent + rec.job_id, rec.scheduler, state, step, loss, _when(rec), rec.job_name, rec.run_dir]


def _when(rec: jobs.JobRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.submitted)) if rec.submitted else "-"


def _counts(states) -> str:
    """``2 COMPLETED, 1 RUNNING``."""
    tally: dict[str, int] = {}
    for state in states:
        tally[state] = tally.get(state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in tally.items())


def _common_dir(records: list[jobs.JobRecord]) -> str:
    import os

    return os.path.commonpath([r.run_dir for r in records])


@click.command()
@click.argument("job")
def status(job: str) -> None:
    """Scheduler state, progress (step/total, ETA, last loss, tokens/s), the code's commit
    and how the last attempt ended. JOB may be a sweep's array id: every element.

    \b
    Example:
      mimo-toolkit status 1234
    """
    records = jobs.find_jobs(job)
    states = jobs.states(records)
    for i, rec in enumerate(records):
        if i:
            click.echo("")
        _status(rec, states[rec.job_id])


def _status(rec: jobs.JobRecord, state: str) -> None:
    p = jobs.progress(rec)
    click.echo(f"job:        {rec.job_id} ({rec.scheduler})  {rec.job_name}  [{rec.recipe}/{rec.preset}]")
    click.echo(f"state:      {state}")
    click.echo(f"run dir:    {rec.run_dir}")
    click.echo(f"code:       {jobs.code_version(rec)}")
    line = f"progress:   step {p['step']}" + (f"/{p['steps']}" if p["steps"] else "")
    if p["loss"] is not None:
        line += f", loss {p['loss']:.4f}"
    if p["tokens_per_s"] is not None:
        line += f", {p['tokens_per_s']:.0f} tokens/s"
    if p["eta_s"] is not None and jobs.is_active(rec, state):
        line += f", ETA {jobs.format_duration(p['eta_s'])}"
    click.echo(line)
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
    """A rank's log, live with --follow, or the first failure with --first-error. JOB may
    be a sweep's array id: each element in turn (--follow takes one element).

    \b
    Example:
      mimo-toolkit logs 1234 --rank 3 --follow
      mimo-toolkit logs 1234 --first-error
    """
    records = jobs.find_jobs(job)
    if follow and len(records) > 1:
        raise UserError(f"logs --follow {job}: a sweep of {len(records)}; name one element "
                        f"({', '.join(r.job_id for r in records)})")
    failed = False
    for rec in records:
        if len(records) > 1:
            click.echo(f"==> {rec.job_id}: {rec.run_dir} <==")
        if first_error:
            failed |= _first_error(rec)
        elif follow:
            path = jobs.rank_log(rec, rank)
            for line in jobs.follow(path, done=lambda: not jobs.is_active(rec, jobs.state_of(rec))):
                click.echo(line, nl=False)
        else:
            click.echo(jobs.rank_log(rec, rank).read_text(errors="replace"), nl=False)
    if failed:
        sys.exit(1)


def _first_error(rec: jobs.JobRecord) -> bool:
    err = jobs.first_error(rec)
    if err is None:
        click.echo(f"no rank of job {rec.job_id} failed")
        return False
    click.echo(f"rank {err['rank']} failed first" + (f" at step {err['step']}" if err.get("step") else "")
               + f": {err['error']}")
    if err.get("traceback"):
        click.echo(err["traceback"].rstrip())
    return True


@click.command()
@click.argument("job")
def cancel(job: str) -> None:
    """Cancel a submitted job (scancel for Slurm, TorchX's cancel for TorchX apps); a
    sweep's array id cancels every element.

    \b
    Example:
      mimo-toolkit cancel 1234
    """
    for rec in jobs.find_jobs(job):
        click.echo(jobs.cancel(rec))
