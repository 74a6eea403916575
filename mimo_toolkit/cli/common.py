"""Options shared by the job commands (show, render, submit), defined once.

Everything heavy is imported inside functions: ``mimo-toolkit --help`` and the light
commands must not pay for torch, torchx or jinja2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from ..resolve import ResolvedJob

F = Callable[..., Any]


class Command(click.Command):
    """A command whose usage errors (missing or bad options) are one line and exit 2,
    like every other user mistake (see ``mimo_toolkit.cli.main``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            message = " ".join(exc.format_message().split())  # click wraps choice lists
            raise UserError(f"{message} (see `mimo-toolkit {self.name} --help`)") from None


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


#: RECIPE and the options that pick and change a job; the command receives them as
#: ``recipe, preset, nodes, sets, env, job_name`` (pass them to :func:`resolve`).
job_options = _stack(
    click.argument("recipe"),
    click.option("--preset", "-p", metavar="NAME", help="Preset of the recipe (default: the recipe's default)."),
    click.option("--nodes", "-n", type=int, metavar="N", help="Scale the layout to N nodes (data parallel grows)."),
    click.option(
        "--set", "sets", multiple=True, metavar="KEY=VALUE",
        help="Override a config value, e.g. layout.llm.tp=2, train.steps=10, cluster.partition=batch (repeatable).",
    ),
    click.option("--env", multiple=True, metavar="NAME=VALUE", help="Environment variable of every rank (repeatable)."),
    click.option("--job-name", metavar="NAME", help="Job name (default: RECIPE-PRESET)."),
)  # fmt: skip

template_dir_option = click.option(
    "--template-dir",
    metavar="DIR",
    help="Directory of templates overriding the built-in ones by file name (see templates/README.md).",
)

force_option = click.option(
    "--force", is_flag=True, help="Write into a run directory that holds another config's job.json."
)


def _scheduler_option() -> Callable[[F], F]:
    from ..schedulers import NAMES  # the one list of backends (light: no client library)

    return click.option("--scheduler", "-s", required=True, type=click.Choice(NAMES), help="Where the job runs.")


scheduler_option = _scheduler_option()


def resolve(
    recipe: str, preset: str | None, nodes: int | None, sets: tuple[str, ...], env: tuple[str, ...],
    job_name: str | None, scheduler: str | None = None,
) -> "ResolvedJob":
    """The validated job the options describe (raises UserError, exit 2). With a
    ``scheduler``, also the files the job will read: an error where the job runs on this
    machine, a warning on stderr where they must exist on the compute nodes."""
    from ..resolve import resolve_job

    resolved = resolve_job(recipe, preset, nodes=nodes, sets=sets, env=env, job_name=job_name)
    if scheduler is not None:
        from ..schedulers import get_backend
        from ..validation import check_data_files

        for warning in check_data_files(resolved.config, get_backend(scheduler).runs_here(resolved)):
            click.echo(f"mimo-toolkit: warning: {warning}", err=True)
    return resolved
