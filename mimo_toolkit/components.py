"""The TorchX component of mimo-toolkit: ``torchrun -> python -m mimo_toolkit.train``.

Registered as the ``torchx.components`` entry point ``mimo`` (see pyproject.toml), so that
``torchx run -s <scheduler> mimo.train --config RUN_DIR/job.json --run_dir RUN_DIR -j ...``
works wherever mimo-toolkit is installed; the file path form
``mimo_toolkit/components.py:train`` works too. ``mimo-toolkit render --scheduler torchx``
writes the full command (``torchx.sh``) for a resolved job.

No ``from __future__ import annotations`` here: TorchX reads the real annotation objects
(``Optional[Dict[str, str]]``) to build the component's command line, and its linter reads
the AST, which accepts only ``typing`` generics.
"""

import re
import shlex
from typing import Dict, List, Optional

import torchx
import torchx.specs as specs
from torchx.specs import macros

from mimo_toolkit import torchrun as _torchrun  # pure: the torchrun command line, built once


def train(
    config: str,
    run_dir: str,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    gpus_per_node: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    name: str = "mimo",
    python: str = "python3",
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,
    image: str = torchx.IMAGE,
    max_retries: int = 0,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train a multimodal model rendered by ``mimo-toolkit render``: torchrun on every node
    runs ``python -m mimo_toolkit.train --config CONFIG --run-dir RUN_DIR``.

    The world size (nnodes x nproc_per_node) must be the one the config was resolved for
    (``mimo-toolkit show RECIPE`` prints it); torchx.sh written by ``mimo-toolkit render
    --scheduler torchx`` fills every argument in. On SIGTERM/SIGUSR2 the ranks save a
    checkpoint and exit 75; a rerun with the same RUN_DIR resumes.

    Args:
        config: path of the resolved job config (RUN_DIR/job.json), readable on every node
        run_dir: the run directory (logs, metrics, checkpoints), shared by every node
        nnodes: number of nodes (one torchrun per node)
        nproc_per_node: processes (ranks) per node
        gpus_per_node: GPUs per node to request (0: a CPU job using gloo)
        cpu: CPUs per node to request (0: the scheduler's default)
        memMB: memory per node in MB (0: the scheduler's default)
        name: job name (characters other than letters, digits, '.', '_', '-' become '_')
        python: Python interpreter on the nodes (with mimo-toolkit and torch installed)
        rdzv_port: rendezvous port on the first node (multi-node jobs; one node picks a free port)
        env: environment variables of every rank, e.g. NCCL_DEBUG=INFO,FOO=bar
            (TorchX 0.7's slurm scheduler passes them as srun --export=ALL,K=V: no commas in values)
        image: container image (docker and kubernetes schedulers; local_cwd and slurm ignore it)
        max_retries: times the scheduler may rerun the whole job after a failure
        mounts: container mounts (docker, kubernetes), e.g. type=volume,src=runs-pvc,dst=/runs
            (several: type=...,type=...); the run directory must be on one
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes={nnodes} and nproc_per_node={nproc_per_node} must be >= 1")
    job_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "mimo"  # TorchX writes it unquoted into #SBATCH
    if nnodes == 1:
        endpoint = "localhost:0"  # one agent: let torchrun pick a free port
    else:
        # expanded by the node's shell: the scheduler names the first node in this variable
        endpoint = _torchrun.ShellExpr(f"$${{{macros.rank0_env}:=localhost}}:{rdzv_port}")
    words = _torchrun.torchrun_args(
        python=python,
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        rdzv_endpoint=endpoint,
        rdzv_id=_torchrun.ShellExpr(macros.app_id),  # TorchX substitutes the app id
        module_args=_torchrun.train_args(config, run_dir),
    )
    # "$$" keeps a literal "$" through TorchX's macro substitution (string.Template) of args
    # and env; the two expressions above are written for it already.
    command = "exec " + _torchrun.shell_words(words, lambda w: shlex.quote(w).replace("$", "$$"))
    role_env = {"PYTHONUNBUFFERED": "1", "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": _torchrun.LOG_LINE_PREFIX}
    role_env.update(env or {})
    return specs.AppDef(
        name=job_name,
        roles=[
            specs.Role(
                name=job_name,  # TorchX's slurm scheduler names each node's job after it
                image=image,
                entrypoint="bash",
                args=["-c", command],
                num_replicas=nnodes,
                resource=specs.Resource(cpu=cpu, gpu=gpus_per_node, memMB=memMB),
                env={key: value.replace("$", "$$") for key, value in role_env.items()},
                port_map={"c10d": rdzv_port},
                max_retries=max_retries,
                mounts=specs.parse_mounts(mounts) if mounts else [],
            )
        ],
    )
