"""Every path and port of one local cluster: :class:`ClusterPaths` (pure)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .settings import DEFAULT_DIR, DEFAULT_PORT_BASE, NODES, PORT_OFFSETS, SBIN_PATH, ClusterError


def default_dir() -> Path:
    return Path(os.environ.get("MIMO_SLURM_DIR") or DEFAULT_DIR)


def port_base_of(slurm_conf: Path) -> int | None:
    """The port base an existing generated slurm.conf was written with."""
    try:
        for line in slurm_conf.read_text().splitlines():
            if line.startswith("SlurmctldPort="):
                return int(line.split("=", 1)[1]) - PORT_OFFSETS["slurmctld"]
    except (OSError, ValueError):
        pass
    return None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_base(start: int = DEFAULT_PORT_BASE, step: int = 100, tries: int = 50) -> int:
    """The first port base from start (in steps) whose ports are all free: for a second cluster."""
    for i in range(tries):
        base = start + i * step
        if all(port_free(p) for p in ClusterPaths(Path("/"), base).ports().values()):
            return base
    raise ClusterError(f"no free port base in {start}..{start + tries * step}")


@dataclass(frozen=True)
class ClusterPaths:
    """Every path and port of one cluster; all paths absolute (the daemons chdir)."""

    dir: Path
    port_base: int = DEFAULT_PORT_BASE

    @classmethod
    def of(cls, dir: str | os.PathLike | None = None, port_base: int | None = None) -> "ClusterPaths":
        """Ports: port_base if given, else $MIMO_SLURM_PORT_BASE, else those of the
        slurm.conf already in dir, else DEFAULT_PORT_BASE."""
        d = Path(os.path.abspath(Path(dir) if dir is not None else default_dir()))
        if port_base is None and os.environ.get("MIMO_SLURM_PORT_BASE"):
            port_base = int(os.environ["MIMO_SLURM_PORT_BASE"])
        if port_base is None:
            port_base = port_base_of(d / "slurm.conf")
        return cls(d, DEFAULT_PORT_BASE if port_base is None else port_base)

    def ports(self) -> dict[str, int]:
        return {"mariadb": self.mysql_port, "slurmctld": self.ctld_port, "slurmdbd": self.dbd_port,
                **{f"slurmd-{n}": self.node_port(n) for n in NODES}}

    # ports: base + PORT_OFFSETS[...]
    @property
    def ctld_port(self) -> int:
        return self.port_base + PORT_OFFSETS["slurmctld"]

    @property
    def dbd_port(self) -> int:
        return self.port_base + PORT_OFFSETS["slurmdbd"]

    def node_port(self, node: str) -> int:
        return self.port_base + PORT_OFFSETS["slurmd"] + NODES.index(node)

    @property
    def mysql_port(self) -> int:
        return self.port_base + PORT_OFFSETS["mariadb"]

    # files
    slurm_conf = property(lambda s: s.dir / "slurm.conf")
    slurmdbd_conf = property(lambda s: s.dir / "slurmdbd.conf")
    run = property(lambda s: s.dir / "run")
    logs = property(lambda s: s.dir / "log")
    state = property(lambda s: s.dir / "state")
    munge_dir = property(lambda s: s.dir / "munge")
    munge_key = property(lambda s: s.dir / "munge" / "munge.key")
    munge_socket = property(lambda s: s.dir / "munge" / "munge.socket")
    munge_pid = property(lambda s: s.dir / "munge" / "munged.pid")
    munge_log = property(lambda s: s.dir / "munge" / "munged.log")
    munge_seed = property(lambda s: s.dir / "munge" / "munged.seed")
    mysql_data = property(lambda s: s.dir / "mysql")
    mysql_socket = property(lambda s: s.dir / "run" / "mysqld.sock")
    mysql_pid = property(lambda s: s.dir / "run" / "mariadbd.pid")
    mysql_log = property(lambda s: s.dir / "log" / "mariadbd.log")
    db_password_file = property(lambda s: s.dir / "db.password")
    dbd_pid = property(lambda s: s.dir / "run" / "slurmdbd.pid")
    dbd_log = property(lambda s: s.dir / "log" / "slurmdbd.log")
    ctld_pid = property(lambda s: s.dir / "run" / "slurmctld.pid")
    ctld_log = property(lambda s: s.dir / "log" / "slurmctld.log")

    def slurmd_pid(self, node: str) -> Path:
        return self.run / f"slurmd-{node}.pid"

    def slurmd_log(self, node: str) -> Path:
        return self.logs / f"slurmd-{node}.log"

    def spool(self, node: str) -> Path:
        return self.dir / f"spool-{node}"

    def env(self) -> dict[str, str]:
        """Environment for daemons and clients of this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.slurm_conf)
        env["PATH"] = merge_path(env.get("PATH", ""))
        return env


def merge_path(path: str) -> str:
    parts = [p for p in path.split(":") if p]
    for p in SBIN_PATH.split(":"):
        if p not in parts:
            parts.append(p)
    return ":".join(parts)

