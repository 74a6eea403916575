"""``mimo-toolkit train``: the in-job entrypoint (what torchrun starts on every rank)."""

from __future__ import annotations

import importlib
import sys

import click

from ..errors import UserError
from .common import Command


@click.command(cls=Command)
@click.option("--config", required=True, metavar="PATH", help="The resolved job config (RUN_DIR/job.json).")
@click.option("--run-dir", required=True, metavar="DIR", help="The run directory (logs, metrics, checkpoints).")
def train(config: str, run_dir: str) -> None:
    """Run one rank of a rendered job (normally started by torchrun, not by hand).

    \b
    Example:
      mimo-toolkit train --config runs/x/job.json --run-dir runs/x
      torchrun --nproc-per-node=2 -m mimo_toolkit.train \\
          --config runs/x/job.json --run-dir runs/x
    """
    try:  # torch and megatron load only here
        entry = importlib.import_module("mimo_toolkit.train")
    except ModuleNotFoundError as exc:
        if exc.name != "mimo_toolkit.train":
            raise
        raise UserError("the training entrypoint mimo_toolkit.train is not installed") from None
    sys.exit(entry.main(config, run_dir))
