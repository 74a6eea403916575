"""Processes: pid files, daemons that belong to a cluster directory, running commands,
waiting for a condition with the daemon's log in the error."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import ClusterPaths
from .settings import NODES, ClusterError


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (an exited daemon whose parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def proc_mentions(pid: int, needle: str) -> bool:
    for name in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if needle.encode() in f.read():
                    return True
        except OSError:
            pass
    return False


@dataclass(frozen=True)
class Daemon:
    name: str  # also the process name (/proc/PID/comm)
    pidfile: Path
    logfile: Path
    node: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}({self.node})" if self.node else self.name

    def pid(self, lay: ClusterPaths) -> int | None:
        """The pid of this daemon if it runs and belongs to the cluster in lay.dir, else None."""
        pid = read_pid(self.pidfile)
        if pid is None or not alive(pid):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        if comm != self.name[:15] or not proc_mentions(pid, str(lay.dir)):
            return None  # a stale pid file whose pid now belongs to someone else
        return pid


def daemons(lay: ClusterPaths) -> list[Daemon]:
    """All daemons in start order."""
    return [
        Daemon("munged", lay.munge_pid, lay.munge_log),
        Daemon("mariadbd", lay.mysql_pid, lay.mysql_log),
        Daemon("slurmdbd", lay.dbd_pid, lay.dbd_log),
        Daemon("slurmctld", lay.ctld_pid, lay.ctld_log),
        *(Daemon("slurmd", lay.slurmd_pid(n), lay.slurmd_log(n), node=n) for n in NODES),
    ]


def run(cmd: list[str], lay: ClusterPaths, *, timeout: float = 30, check: bool = True,
         input: str | None = None, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=lay.env(), capture_output=True, text=True, timeout=timeout,
                         input=input, **kw)
    if check and res.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def try_run(cmd: list[str], lay: ClusterPaths, timeout: float = 15) -> subprocess.CompletedProcess | None:
    try:
        res = subprocess.run(cmd, env=lay.env(), capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return res


def spawn(cmd: list[str], lay: ClusterPaths, startlog: Path, **kw) -> None:
    """Run a daemon's launcher with output to startlog; it forks and this returns at once."""
    with open(startlog, "ab") as out:
        out.write(f"--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        out.flush()
        res = subprocess.run(cmd, env=lay.env(), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, timeout=60, **kw)
    if res.returncode != 0:
        raise ClusterError(f"{cmd[0]} exited {res.returncode}; see {startlog}\n{tail(startlog)}")


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(f"    {line}" for line in lines[-n:])


def wait_for(what: str, check, timeout: float, daemon: Daemon | None = None,
             lay: ClusterPaths | None = None, interval: float = 0.1):
    """Until ``check()`` is true; fails early, with the daemon's log, once the daemon died.

    A daemon writes its pid file some time after the fork (MariaDB only after InnoDB's
    start-up, seconds on a busy machine), and ``up`` removed the old one: no pid file yet
    means "still starting", a pid file whose process is gone means "died"."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if daemon is not None and lay is not None and daemon.pidfile.exists() and daemon.pid(lay) is None:
            time.sleep(0.3)  # a pid file being rewritten
            if daemon.pid(lay) is None and not check():
                raise ClusterError(f"{daemon.label} is not running ({what}); log {daemon.logfile}:\n"
                                   f"{tail(daemon.logfile)}")
        if time.monotonic() > deadline:
            extra = f"; log {daemon.logfile}:\n{tail(daemon.logfile)}" if daemon else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def connectable(addr) -> bool:
    fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(addr)
            return True
        except OSError:
            return False
