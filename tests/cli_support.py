"""Run the ``mimo-toolkit`` command line in this process (as the console script does, through
``mimo_toolkit.cli.main``): the exit code, stdout and stderr, without a process start."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
from dataclasses import dataclass

from mimo_toolkit.cli import main


@dataclass
class CliRun:
    code: int
    out: str
    err: str


def run_cli(args: list[str] | str, env: dict[str, str] | None = None) -> CliRun:
    """``mimo-toolkit ARGS`` with ``env`` added to the environment for the call."""
    argv = shlex.split(args) if isinstance(args, str) else list(args)
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return CliRun(code, out.getvalue(), err.getvalue())
