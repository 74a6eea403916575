"""Names, ports, timings and the one error type of the local cluster (no logic)."""

from __future__ import annotations

import sys

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
# What `is_installed` requires on PATH (sbin included: root's PATH on CI may lack it).
REQUIRED_BINARIES = ("sbatch", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CLUSTER_NAME = "mimo"
NODES = ("node1", "node2")
#: Partition -> its nodes. The first is the default; the others hold one node each, so that a
#: heterogeneous job can ask for a different partition per component.
PARTITIONS = {"debug": NODES, "first": ("node1",), "second": ("node2",)}
PARTITION = "debug"
CPUS_PER_NODE = 4  # oversubscribes a 2-core machine on purpose (SlurmdParameters=config_overrides)
DEFAULT_DIR = "/tmp/mimo-slurm"
DEFAULT_PORT_BASE = 16800
# Ports are DEFAULT_PORT_BASE (or --port-base) plus these: 16806, 16817, 16819, 16821-16822.
PORT_OFFSETS = {"mariadb": 6, "slurmctld": 17, "slurmdbd": 19, "slurmd": 21}  # slurmd: +i per node
# KillWait: seconds between the SIGTERM that ends a job (scancel, requeue, time limit, node
# failure) and the SIGKILL.  Our preemption handler needs a few seconds to write a checkpoint
# marker and exit; 15 s leaves room for that and still keeps tests and `down` quick
# (Slurm's default is 30 s).
KILL_WAIT_S = 15
# Job credential lifetime.  Slurm holds a requeued job for cred_expire + 1 seconds before it
# may start again (the default, 120 s, would make requeue tests crawl).
CRED_EXPIRE_S = 10
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
UP_TIMEOUT_S = 90.0


def log(msg: str) -> None:
    print(f"[slurm_cluster] {msg}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    """Raised when a daemon fails to start or the cluster does not become healthy."""

