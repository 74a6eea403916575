"""The ``mimo-toolkit`` command line.

Each command lives in its own module here and is loaded only when it runs, so
``mimo-toolkit --help`` and the light commands (recipes, show, render, submit --dry-run)
never import torch or megatron-core. A command parses its arguments and calls one library
function; a :class:`~mimo_toolkit.errors.UserError` becomes one line on stderr and exit
code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from ..errors import UserError

#: command name -> "module:attribute" of its click command (loaded lazily).
COMMANDS = {
    "recipes": "mimo_toolkit.cli.recipes:recipes",
    "show": "mimo_toolkit.cli.show:show",
    "render": "mimo_toolkit.cli.render:render",
    "submit": "mimo_toolkit.cli.submit:submit",
    "train": "mimo_toolkit.cli.train:train",
    "plan": "mimo_toolkit.cli.plan:plan",
    "calibrate": "mimo_toolkit.cli.calibrate:calibrate",
    "eval": "mimo_toolkit.cli.eval:eval_command",
    "export": "mimo_toolkit.cli.export:export",
    "list": "mimo_toolkit.cli.jobs:list_jobs",
    "status": "mimo_toolkit.cli.jobs:status",
    "logs": "mimo_toolkit.cli.jobs:logs",
    "cancel": "mimo_toolkit.cli.jobs:cancel",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _exists(target))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not _exists(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _exists(target: str) -> bool:
    module = target.split(":")[0]
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mimo-toolkit")
def cli() -> None:
    """Train multimodal models with a different parallel layout per module.

    \b
    Example:
      mimo-toolkit recipes
      mimo-toolkit show llava --preset 4node
      mimo-toolkit submit llava --preset tiny --scheduler local
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user mistakes exit 2 with one line, no traceback.

    With ``standalone_mode=False`` click does not exit: it *returns* what the command
    returned, or the code of ``ctx.exit(code)``. A command that ends with a status (``submit``
    returns its job's exit code) therefore returns an int, and that int is the exit code.
    """
    try:
        code = cli.main(args=argv, prog_name="mimo-toolkit", standalone_mode=False)
    except UserError as exc:
        click.echo(f"mimo-toolkit: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if type(code) is int else 0)  # noqa: E721 - a bool is no exit code
