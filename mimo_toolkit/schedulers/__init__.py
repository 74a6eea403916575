"""Scheduler backends: one class per place a job can run, behind one small interface
(:class:`~mimo_toolkit.schedulers.base.Backend`).

=========  ==========================================================================
``slurm``  ``sbatch`` of the rendered batch script (:mod:`.slurm`)
``torchx`` ``torchx run -s <cluster.torchx_scheduler> mimo.train`` through torchx.sh:
           TorchX's slurm, local_cwd, kubernetes, ... schedulers (:mod:`.torchx`)
``local``  every rank on this machine through TorchX's local_cwd scheduler, waiting for
           the job (:mod:`.local`)
=========  ==========================================================================

This registry is the only place that lists them; the CLI and the job registry look a
backend up by name and never branch on it.
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Backend

#: --scheduler name -> "module:class" (imported on first use).
BACKENDS = {
    "slurm": "mimo_toolkit.schedulers.slurm:SlurmBackend",
    "torchx": "mimo_toolkit.schedulers.torchx:TorchxBackend",
    "local": "mimo_toolkit.schedulers.local:LocalBackend",
}
NAMES = tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (a UserError naming the valid ones otherwise)."""
    target = BACKENDS.get(name)
    if target is None:
        raise UserError(f"--scheduler {name!r}: expected one of {', '.join(NAMES)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
