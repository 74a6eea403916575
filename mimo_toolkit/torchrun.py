"""The torchrun command line, built in ONE place.

Every launcher starts the ranks the same way: the batch script (``templates/
slurm.sbatch.j2`` receives this list as ``torchrun``), the TorchX component
(``components.py``), calibration runs (``planner/measure.py``), benchmarks and the tests.
:func:`torchrun_args` returns the argument list; a word the launching shell must expand
(``"$SLURM_NNODES"``, the head node's address) is a :class:`ShellExpr` and is written as
it is, every other word is quoted by the caller's quoting (:func:`shell_words`).

Pure: no torch import (torchrun is started as ``python -m torch.distributed.run``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence

#: The in-job entrypoint every launch runs (``python -m mimo_toolkit.train``).
TRAIN_MODULE = "mimo_toolkit.train"
#: Signals torchrun forwards to its workers (torch's torchrun forwards extra signals only
#: when asked; SIGUSR2 is the preemption warning, never SIGUSR1: NCCL uses it).
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"
#: torchrun's per-line prefix (``--tee=3``): the *global* rank, e.g. ``[rank3] loss ...``.
#: Launchers export it as TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE.
LOG_LINE_PREFIX = "[rank${rank}] "
#: Seconds between torchrun's checks of its workers (torch's default: 0.1). Each check also
#: queries the rendezvous store; on a node whose ranks use every core, ten checks a second
#: took CPU from them: two ranks' copy-bound import on a 2-core VM, 2.50 s at 0.1 vs 1.90 s
#: at 1.0 (a bare two-process copy: 1.74 s; docs/bench_import.md). A failed rank's peers are
#: still stopped within a second.
MONITOR_INTERVAL_S = 1.0


class ShellExpr(str):
    """Shell source the launching shell expands, e.g. ``"$SLURM_NNODES"``: written verbatim.
    Only this toolkit's own code makes these; user values are always plain words."""


def _flag(name: str, value: object) -> str:
    """``--name=value``; a :class:`ShellExpr` value keeps the word an expression."""
    if isinstance(value, ShellExpr):
        return ShellExpr(f"{name}={value}")
    return f"{name}={value}"


def torchrun_args(
    *,
    python: str,
    nnodes: int | str,
    nproc_per_node: int | str | None,
    rdzv_endpoint: str,
    rdzv_backend: str = "c10d",
    rdzv_id: str | None = None,
    module: str | None = None,
    module_args: Sequence[str] = (),
    monitor_interval: float = MONITOR_INTERVAL_S,
) -> list[str]:
    """``python -m torch.distributed.run ... -m MODULE ARGS``: one torchrun per node, a c10d
    rendezvous at ``rdzv_endpoint`` (``localhost:0`` picks a free port on one node), no
    elastic restarts (the scheduler requeues), the stop signals forwarded to the ranks, and
    every rank's output teed with its rank prefix. ``module`` defaults to the training
    entrypoint :data:`TRAIN_MODULE`. ``rdzv_backend="static"`` ranks the nodes by their
    ``PET_NODE_RANK`` (global ranks follow the node order); ``nproc_per_node=None`` leaves
    the count to ``PET_NPROC_PER_NODE``, set per node."""
    words = [python, "-m", "torch.distributed.run", _flag("--nnodes", nnodes)]
    if nproc_per_node is not None:  # else torchrun reads PET_NPROC_PER_NODE
        words.append(_flag("--nproc-per-node", nproc_per_node))
    words += [f"--rdzv-backend={rdzv_backend}", _flag("--rdzv-endpoint", rdzv_endpoint)]
    if rdzv_id is not None:
        words.append(_flag("--rdzv-id", rdzv_id))
    words += ["--max-restarts=0", f"--monitor-interval={monitor_interval}"]
    words += [f"--signals-to-handle={TORCHRUN_SIGNALS}", "--tee=3", "-m", module or TRAIN_MODULE, *module_args]
    return words


def train_args(config: str | ShellExpr, run_dir: str | ShellExpr) -> list[str]:
    """The entrypoint's arguments: the rendered job.json and the run directory."""
    return ["--config", config, "--run-dir", run_dir]


def shell_words(words: Iterable[str], quote: Callable[[str], str] = shlex.quote, sep: str = " ") -> str:
    """The words as shell source: :class:`ShellExpr` verbatim, every other word quoted."""
    return sep.join(w if isinstance(w, ShellExpr) else quote(w) for w in words)
