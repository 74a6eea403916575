#!/usr/bin/env python3
"""A real two-node Slurm cluster on this one machine, for tests and demos.

    scripts/slurm_cluster.py install            # apt-get the Debian packages (root, Debian 12)
    eval "$(scripts/slurm_cluster.py up)"       # start everything, then export SLURM_CONF
    scripts/slurm_cluster.py status             # exit 0 when healthy
    scripts/slurm_cluster.py down [--purge]     # stop what `up` started

`up` starts, all under one directory (``--dir``, default ``$MIMO_SLURM_DIR`` or
``/tmp/mimo-slurm``): a private munged (own key, socket, pid and log), a MariaDB server on a
private port and socket, slurmdbd, slurmctld and two slurmd daemons ``node1`` and ``node2``
(``slurmd -N``), in three partitions: ``debug`` (both nodes, the default), ``first`` (node1)
and ``second`` (node2), so that heterogeneous jobs can put each component on its own
partition.  Nothing is written to /etc and no system service is touched, so a system
munged or MariaDB can run beside it.  Progress goes to stderr; the last line on stdout is
``export SLURM_CONF=<dir>/slurm.conf`` because clients (sbatch, squeue, sacct, scontrol) need
it to find this cluster.

Tests use the Python API: ``up(dir) -> dict``, ``down(dir)``, ``status(dir) -> dict``,
``is_installed() -> bool``.  Standard library only; runs as root. The code lives in
``scripts/slurm_local/`` (one module per concern); this file is its command line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/slurm_local

from slurm_local.install import install  # noqa: E402
from slurm_local.lifecycle import down, info, is_installed, status, up  # noqa: E402
from slurm_local.paths import ClusterPaths, free_port_base  # noqa: E402
from slurm_local.settings import DEFAULT_DIR, DEFAULT_PORT_BASE, REQUIRED_BINARIES, ClusterError, log  # noqa: E402

__all__ = ["ClusterError", "REQUIRED_BINARIES", "down", "free_port_base", "info", "install", "is_installed",
           "status", "up"]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _print_status(st: dict) -> None:
    print(f"cluster dir: {st['dir']}")
    for label, pid in st["daemons"].items():
        print(f"  {label:<16} {'running (pid %d)' % pid if pid else 'not running'}")
    if st["sinfo"] is not None:
        print(st["sinfo"].rstrip())
    print("healthy" if st["healthy"] else "NOT healthy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="apt-get install the Slurm, munge and MariaDB packages")
    for name, help_ in [("up", "start the cluster and wait until it is healthy"),
                        ("down", "stop the daemons started by `up`"),
                        ("status", "show daemons and sinfo; exit 0 when healthy"),
                        ("env", "print `export SLURM_CONF=...`")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", default=None,
                       help=f"cluster directory (default: $MIMO_SLURM_DIR or {DEFAULT_DIR})")
        p.add_argument("--port-base", type=int, default=None,
                       help=f"ports are base+6 (MariaDB), +17 (slurmctld), +19 (slurmdbd), +21.. "
                            f"(slurmd) (default: $MIMO_SLURM_PORT_BASE, else the ports of the "
                            f"slurm.conf already in --dir, else {DEFAULT_PORT_BASE})")
        if name == "down":
            p.add_argument("--purge", action="store_true", help="also delete the directory")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "install":
            install()
            return 0
        lay = ClusterPaths.of(args.dir, args.port_base)
        if args.cmd == "up":
            up(lay.dir, port_base=lay.port_base)
        elif args.cmd == "down":
            down(lay.dir, purge=args.purge, port_base=lay.port_base)
            return 0
        elif args.cmd == "status":
            st = status(lay.dir, port_base=lay.port_base)
            _print_status(st)
            return 0 if st["healthy"] else 1
        print(f"export SLURM_CONF={lay.slurm_conf}")
        return 0
    except (ClusterError, subprocess.TimeoutExpired) as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())