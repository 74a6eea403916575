#!/usr/bin/env python3
"""A real two-node Slurm cluster on this one machine, for tests and demos.

    scripts/slurm_cluster.py install            # apt-get the Debian packages (root, Debian 12)
    eval "$(scripts/slurm_cluster.py up)"       # start everything, then export SLURM_CONF
    scripts/slurm_cluster.py status             # exit 0 when healthy
    scripts/slurm_cluster.py down [--purge]     # stop what `up` started

`up` starts, all under one directory (``--dir``, default ``$MIMO_SLURM_DIR`` or
``/tmp/mimo-slurm``): a private munged (own key, socket, pid and log), a MariaDB server on a
private port and socket, slurmdbd, slurmctld and two slurmd daemons ``node1`` and ``node2``
(``slurmd -N``).  Nothing is written to /etc and no system service is touched, so a system
munged or MariaDB can run beside it.  Progress goes to stderr; the last line on stdout is
``export SLURM_CONF=<dir>/slurm.conf`` because clients (sbatch, squeue, sacct, scontrol) need
it to find this cluster.

Tests use the Python API: ``up(dir) -> dict``, ``down(dir)``, ``status(dir) -> dict``,
``is_installed() -> bool``.  Standard library only; runs as root.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
# What `is_installed` requires on PATH (sbin included: root's PATH on CI may lack it).
REQUIRED_BINARIES = ("sbatch", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CLUSTER_NAME = "mimo"
PARTITION = "debug"
NODES = ("node1", "node2")
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


# --------------------------------------------------------------------------------------------
# Paths and configuration (pure)
# --------------------------------------------------------------------------------------------


def default_dir() -> Path:
    return Path(os.environ.get("MIMO_SLURM_DIR") or DEFAULT_DIR)


def _port_base_of(slurm_conf: Path) -> int | None:
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
        if all(port_free(p) for p in Layout(Path("/"), base).ports().values()):
            return base
    raise ClusterError(f"no free port base in {start}..{start + tries * step}")


@dataclass(frozen=True)
class Layout:
    """Every path and port of one cluster; all paths absolute (the daemons chdir)."""

    dir: Path
    port_base: int = DEFAULT_PORT_BASE

    @classmethod
    def of(cls, dir: str | os.PathLike | None = None, port_base: int | None = None) -> "Layout":
        """Ports: port_base if given, else $MIMO_SLURM_PORT_BASE, else those of the
        slurm.conf already in dir, else DEFAULT_PORT_BASE."""
        d = Path(os.path.abspath(Path(dir) if dir is not None else default_dir()))
        if port_base is None and os.environ.get("MIMO_SLURM_PORT_BASE"):
            port_base = int(os.environ["MIMO_SLURM_PORT_BASE"])
        if port_base is None:
            port_base = _port_base_of(d / "slurm.conf")
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
        env["PATH"] = _merge_path(env.get("PATH", ""))
        return env


def _merge_path(path: str) -> str:
    parts = [p for p in path.split(":") if p]
    for p in SBIN_PATH.split(":"):
        if p not in parts:
            parts.append(p)
    return ":".join(parts)


def hostname() -> str:
    return socket.gethostname().split(".")[0]


def real_memory_mb() -> int:
    """RealMemory per node: half the machine (two nodes share it), capped at 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total_mb = int(line.split()[1]) // 1024
                    return max(512, min(8192, total_mb // 2))
    except OSError:
        pass
    return 1024


def render_slurm_conf(lay: Layout, host: str, real_memory: int) -> str:
    auth_info = f"socket={lay.munge_socket},cred_expire={CRED_EXPIRE_S}"
    nodes = "\n".join(
        f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={lay.node_port(n)} "
        f"CPUs={CPUS_PER_NODE} Sockets=1 CoresPerSocket={CPUS_PER_NODE} ThreadsPerCore=1 "
        f"RealMemory={real_memory} State=UNKNOWN"
        for n in NODES
    )
    return f"""\
# Generated by scripts/slurm_cluster.py -- a two-node cluster on one machine. Do not edit:
# `up` rewrites this file (and restarts the cluster) when it differs.
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={lay.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# The private munged of this cluster; cred_expire also sets how long a requeued job waits.
AuthInfo={auth_info}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the CPUs/RealMemory below rather than the hardware (2 cores here, 4 CPUs declared).
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (defaults: 60 s main loop, 30 s backfill) so that requeued
# jobs and jobs whose BeginTime passed start promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or times out: enough
# for our preemption handler to checkpoint and exit, short enough for quick tests.
KillWait={KILL_WAIT_S}
UnkillableStepTimeout=60
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={lay.dbd_port}
# Messages to slurmdbd are signed with the munge socket named here, not with AuthInfo's.
AccountingStoragePass={lay.munge_socket}
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
StateSaveLocation={lay.state}
SlurmctldPidFile={lay.ctld_pid}
SlurmctldLogFile={lay.ctld_log}
SlurmctldDebug=info
SlurmdPidFile={lay.run}/slurmd-%n.pid
SlurmdSpoolDir={lay.dir}/spool-%n
SlurmdLogFile={lay.logs}/slurmd-%n.log
SlurmdDebug=info
PlugStackConfig={lay.dir}/plugstack.conf
{nodes}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def render_slurmdbd_conf(lay: Layout, host: str, password: str) -> str:
    return f"""\
# Generated by scripts/slurm_cluster.py
AuthType=auth/munge
AuthInfo=socket={lay.munge_socket}
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={lay.dbd_port}
SlurmUser=root
DebugLevel=info
LogFile={lay.dbd_log}
PidFile={lay.dbd_pid}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={lay.mysql_port}
StorageUser={DB_USER}
StoragePass={password}
StorageLoc={DB_NAME}
"""


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (an exited daemon whose parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _proc_mentions(pid: int, needle: str) -> bool:
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

    def pid(self, lay: Layout) -> int | None:
        """The pid of this daemon if it runs and belongs to the cluster in lay.dir, else None."""
        pid = _read_pid(self.pidfile)
        if pid is None or not _alive(pid):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        if comm != self.name[:15] or not _proc_mentions(pid, str(lay.dir)):
            return None  # a stale pid file whose pid now belongs to someone else
        return pid


def daemons(lay: Layout) -> list[Daemon]:
    """All daemons in start order."""
    return [
        Daemon("munged", lay.munge_pid, lay.munge_log),
        Daemon("mariadbd", lay.mysql_pid, lay.mysql_log),
        Daemon("slurmdbd", lay.dbd_pid, lay.dbd_log),
        Daemon("slurmctld", lay.ctld_pid, lay.ctld_log),
        *(Daemon("slurmd", lay.slurmd_pid(n), lay.slurmd_log(n), node=n) for n in NODES),
    ]


def _run(cmd: list[str], lay: Layout, *, timeout: float = 30, check: bool = True,
         input: str | None = None, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=lay.env(), capture_output=True, text=True, timeout=timeout,
                         input=input, **kw)
    if check and res.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def _try(cmd: list[str], lay: Layout, timeout: float = 15) -> subprocess.CompletedProcess | None:
    try:
        res = subprocess.run(cmd, env=lay.env(), capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return res


def _spawn(cmd: list[str], lay: Layout, startlog: Path, **kw) -> None:
    """Run a daemon's launcher with output to startlog; it forks and this returns at once."""
    with open(startlog, "ab") as out:
        out.write(f"--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        out.flush()
        res = subprocess.run(cmd, env=lay.env(), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, timeout=60, **kw)
    if res.returncode != 0:
        raise ClusterError(f"{cmd[0]} exited {res.returncode}; see {startlog}\n{_tail(startlog)}")


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(f"    {line}" for line in lines[-n:])


def _wait(what: str, check, timeout: float, daemon: Daemon | None = None,
          lay: Layout | None = None, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if daemon is not None and lay is not None and daemon.pid(lay) is None:
            time.sleep(0.3)  # pid files appear a moment after the fork
            if daemon.pid(lay) is None and not check():
                raise ClusterError(f"{daemon.label} is not running ({what}); log {daemon.logfile}:\n"
                                   f"{_tail(daemon.logfile)}")
        if time.monotonic() > deadline:
            extra = f"; log {daemon.logfile}:\n{_tail(daemon.logfile)}" if daemon else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def _connectable(addr) -> bool:
    fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(addr)
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------------------------
# Starting each daemon
# --------------------------------------------------------------------------------------------


def _start_munged(lay: Layout, d: Daemon) -> None:
    munge = pwd.getpwnam("munge")
    os.chown(lay.munge_dir, munge.pw_uid, munge.pw_gid)
    os.chmod(lay.munge_dir, 0o755)  # clients need to reach the socket
    if not lay.munge_key.exists():
        with open(os.open(lay.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as f:
            f.write(secrets.token_bytes(1024))
    os.chown(lay.munge_key, munge.pw_uid, munge.pw_gid)
    os.chmod(lay.munge_key, 0o400)
    for stale in (lay.munge_socket, Path(f"{lay.munge_socket}.lock")):
        stale.unlink(missing_ok=True)
    _spawn(["munged", f"--key-file={lay.munge_key}", f"--socket={lay.munge_socket}",
            f"--pid-file={lay.munge_pid}", f"--log-file={lay.munge_log}",
            f"--seed-file={lay.munge_seed}", "--num-threads=4"],
           lay, lay.logs / "munged.start.log", user=munge.pw_uid, group=munge.pw_gid,
           extra_groups=[], cwd=lay.munge_dir)
    _wait("the munge socket", lambda: _connectable(str(lay.munge_socket)), 20, d, lay)


def _db_password(lay: Layout) -> str:
    if lay.db_password_file.exists():
        return lay.db_password_file.read_text().strip()
    pw = secrets.token_hex(16)
    with open(os.open(lay.db_password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(pw + "\n")
    return pw


def _start_mariadbd(lay: Layout, d: Daemon) -> None:
    if not (lay.mysql_data / "mysql").is_dir():
        if lay.mysql_data.exists():
            shutil.rmtree(lay.mysql_data)  # a half-finished earlier install
        log("initialising MariaDB data directory")
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={lay.mysql_data}", "--user=root",
              "--auth-root-authentication-method=socket", "--skip-test-db",
              "--skip-name-resolve"], lay, timeout=120, cwd=lay.dir)
    lay.mysql_socket.unlink(missing_ok=True)
    _spawn(["setsid", "-f", "mariadbd", "--no-defaults", f"--datadir={lay.mysql_data}",
            f"--socket={lay.mysql_socket}", f"--port={lay.mysql_port}", "--bind-address=127.0.0.1",
            f"--pid-file={lay.mysql_pid}", f"--log-error={lay.mysql_log}", "--user=root",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M", "--innodb-lock-wait-timeout=900",
            "--innodb-flush-log-at-trx-commit=2"],
           lay, lay.logs / "mariadbd.start.log", cwd=lay.dir)
    _wait("MariaDB's socket", lambda: _connectable(str(lay.mysql_socket)), 60, d, lay)
    pw = _db_password(lay)
    sql = f"""
        CREATE DATABASE IF NOT EXISTS {DB_NAME};
        CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{pw}';
        CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{pw}';
        ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{pw}';
        ALTER USER '{DB_USER}'@'localhost' IDENTIFIED BY '{pw}';
        GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';
        GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'localhost';
        FLUSH PRIVILEGES;
    """
    _run(["mariadb", "--no-defaults", f"--socket={lay.mysql_socket}", "-uroot"], lay, input=sql)


def _start_slurmdbd(lay: Layout, d: Daemon) -> None:
    _spawn(["slurmdbd"], lay, lay.logs / "slurmdbd.start.log", cwd=lay.dir)
    _wait("slurmdbd's port", lambda: _connectable(("127.0.0.1", lay.dbd_port)), 60, d, lay)

    def clusters():
        res = _try(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], lay)
        return res if res is not None and res.returncode == 0 else None

    res = _wait("sacctmgr to answer", clusters, 60, d, lay)
    if CLUSTER_NAME not in res.stdout.split():
        log(f"registering cluster {CLUSTER_NAME!r} with slurmdbd")
        _run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], lay)


def _start_slurmctld(lay: Layout, d: Daemon) -> None:
    _spawn(["slurmctld", "-f", str(lay.slurm_conf)], lay, lay.logs / "slurmctld.start.log",
           cwd=lay.dir)

    def ping():
        res = _try(["scontrol", "ping"], lay)
        return res is not None and res.returncode == 0 and " is UP" in res.stdout

    _wait("slurmctld to answer `scontrol ping`", ping, 60, d, lay)


def _start_slurmd(lay: Layout, d: Daemon) -> None:
    _spawn(["slurmd", "-f", str(lay.slurm_conf), "-N", d.node], lay,
           lay.logs / f"slurmd-{d.node}.start.log", cwd=lay.dir)


STARTERS = {"munged": _start_munged, "mariadbd": _start_mariadbd, "slurmdbd": _start_slurmdbd,
            "slurmctld": _start_slurmctld, "slurmd": _start_slurmd}


# --------------------------------------------------------------------------------------------
# Cluster queries
# --------------------------------------------------------------------------------------------

# sinfo %t states in which a node runs (or can run) jobs.
USABLE_STATES = {"idle", "mix", "alloc", "comp"}


def node_states(lay: Layout) -> dict[str, str] | None:
    res = _try(["sinfo", "-h", "-N", "-o", "%N %t"], lay)
    if res is None or res.returncode != 0:
        return None
    states = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _sacct_ok(lay: Layout) -> bool:
    res = _try(["sacct", "-n", "-X", "-o", "JobID"], lay)
    return res is not None and res.returncode == 0


def _resume_drained(lay: Layout, states: dict[str, str]) -> None:
    for node, state in states.items():
        if state.rstrip("*~#!%$@^-") in ("drain", "drng", "fail", "failg"):
            log(f"{node} is {state}: resuming it")
            _try(["scontrol", "update", f"NodeName={node}", "State=RESUME"], lay)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def is_installed() -> bool:
    path = _merge_path(os.environ.get("PATH", ""))
    return all(shutil.which(b, path=path) for b in REQUIRED_BINARIES)


def info(dir: str | os.PathLike | None = None, port_base: int | None = None) -> dict:
    lay = Layout.of(dir, port_base)
    return {
        "dir": str(lay.dir),
        "slurm_conf": str(lay.slurm_conf),
        "env": {"SLURM_CONF": str(lay.slurm_conf)},
        "cluster": CLUSTER_NAME,
        "partition": PARTITION,
        "nodes": list(NODES),
        "cpus_per_node": CPUS_PER_NODE,
        "kill_wait_s": KILL_WAIT_S,
        "requeue_delay_s": CRED_EXPIRE_S + 1,
        "hostname": hostname(),
        "port_base": lay.port_base,
        "ports": lay.ports(),
        "logs": str(lay.logs),
    }


@contextlib.contextmanager
def _locked(lay: Layout):
    """Serialise up/down on one directory (two test sessions may share $MIMO_SLURM_DIR)."""
    lay.dir.mkdir(parents=True, exist_ok=True)
    with open(lay.dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    try:
        if path.read_text() == text:
            os.chmod(path, mode)
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def up(dir: str | os.PathLike | None = None, *, port_base: int | None = None,
       timeout: float = UP_TIMEOUT_S) -> dict:
    """Start the cluster (or whatever part of it is not running) and wait until it is healthy:
    both nodes usable (idle on a fresh cluster) in sinfo and sacct answering.

    Idempotent: daemons that already run from this directory are kept. If the generated
    configuration differs from the one on disk, the running daemons are stopped first.
    Returns info(): {"dir", "slurm_conf", "env", "nodes", "ports", ...}.
    """
    if os.geteuid() != 0:
        raise ClusterError("run as root (the daemons run as root and munged as user munge)")
    if not is_installed():
        raise ClusterError("Slurm is not installed: run `scripts/slurm_cluster.py install`")
    lay = Layout.of(dir, port_base)
    if len(str(lay.munge_socket)) > 100 or len(str(lay.mysql_socket)) > 100:
        raise ClusterError(f"{lay.dir} is too long for a unix socket path; pick a shorter --dir")
    with _locked(lay):
        return _up(lay, timeout)


def _up(lay: Layout, timeout: float) -> dict:
    t0 = time.monotonic()
    host = hostname()
    for p in (lay.run, lay.logs, lay.state, lay.munge_dir, *(lay.spool(n) for n in NODES)):
        p.mkdir(parents=True, exist_ok=True)
    os.chmod(lay.dir, 0o755)  # munged runs as user munge and must reach its directory

    slurm_conf = render_slurm_conf(lay, host, real_memory_mb())
    dbd_conf = render_slurmdbd_conf(lay, host, _db_password(lay))
    changed = (lay.slurm_conf.exists() and lay.slurm_conf.read_text() != slurm_conf) or \
              (lay.slurmdbd_conf.exists() and lay.slurmdbd_conf.read_text() != dbd_conf)
    if changed and any(d.pid(lay) for d in daemons(lay)):
        log("configuration changed: restarting the cluster")
        _down(lay)
    _write_if_changed(lay.slurm_conf, slurm_conf, 0o644)
    _write_if_changed(lay.slurmdbd_conf, dbd_conf, 0o600)
    _write_if_changed(lay.dir / "plugstack.conf", "# no SPANK plugins\n", 0o644)

    to_start = [d for d in daemons(lay) if d.pid(lay) is None]
    ports = {"mariadbd": lay.mysql_port, "slurmdbd": lay.dbd_port, "slurmctld": lay.ctld_port}
    for d in to_start:
        port = lay.node_port(d.node) if d.node else ports.get(d.name)
        if port is not None and not port_free(port):
            raise ClusterError(f"port {port} (for {d.label}) is in use by another process: stop "
                               f"it or pick other ports with --port-base / $MIMO_SLURM_PORT_BASE")
    started = []
    for d in to_start:
        t = time.monotonic()
        d.pidfile.unlink(missing_ok=True)
        STARTERS[d.name](lay, d)
        started.append(d.label)
        log(f"started {d.label} ({time.monotonic() - t:.1f}s)")

    def nodes_ready():
        states = node_states(lay)
        if not states:
            return None
        _resume_drained(lay, states)
        if all(states.get(n) in USABLE_STATES for n in NODES):
            return states
        return None

    remaining = max(10.0, timeout - (time.monotonic() - t0))
    ctld = next(d for d in daemons(lay) if d.name == "slurmctld")
    states = _wait(f"nodes {', '.join(NODES)} to be idle in sinfo", nodes_ready, remaining, ctld, lay)
    _wait("sacct to answer", lambda: _sacct_ok(lay), 30)
    log(f"cluster {CLUSTER_NAME!r} is up in {lay.dir} ({time.monotonic() - t0:.1f}s; "
        f"{'started ' + ', '.join(started) if started else 'already running'}); "
        f"nodes: {', '.join(f'{n}={s}' for n, s in states.items())}")
    return info(lay.dir, lay.port_base)


def _cancel_jobs(lay: Layout, timeout: float) -> None:
    res = _try(["squeue", "-h", "-o", "%A"], lay, timeout=10)
    if res is None or res.returncode != 0:
        return
    jobs = res.stdout.split()
    if not jobs:
        return
    log(f"cancelling {len(jobs)} job(s): {' '.join(jobs)}")
    _try(["scancel", *jobs], lay)

    def drained():
        r = _try(["squeue", "-h", "-o", "%A"], lay, timeout=10)
        return r is not None and r.returncode == 0 and not r.stdout.split()

    try:
        _wait("cancelled jobs to end", drained, timeout)
    except ClusterError as e:
        log(f"warning: {e}")


def _stop(lay: Layout, group: list[Daemon], timeout: float = 30) -> None:
    pids = {}
    for d in group:
        pid = d.pid(lay)
        if pid is not None:
            pids[d.label] = pid
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for label, pid in pids.items():
        if _alive(pid):
            log(f"{label} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait(f"{label} to die", lambda: not _alive(pid), 10)
        log(f"stopped {label} (pid {pid})")


def down(dir: str | os.PathLike | None = None, *, purge: bool = False,
         port_base: int | None = None) -> None:
    """Stop the daemons this tool started in dir (pid files), in reverse start order.

    Jobs still queued or running are cancelled first so that no job processes outlive the
    cluster. The directory (logs) is kept unless purge is true.
    """
    lay = Layout.of(dir, port_base)
    if not lay.dir.is_dir():
        return
    with _locked(lay):
        _down(lay)
        if purge:
            shutil.rmtree(lay.dir)
            log(f"removed {lay.dir}")


def _down(lay: Layout) -> None:
    ds = daemons(lay)
    by_name = {d.label: d for d in ds}
    if by_name["slurmctld"].pid(lay) is not None and any(d.pid(lay) for d in ds if d.node):
        _cancel_jobs(lay, timeout=KILL_WAIT_S + 10)
    _stop(lay, [d for d in ds if d.node])
    for name in ("slurmctld", "slurmdbd", "mariadbd", "munged"):
        _stop(lay, [by_name[name]], timeout=60 if name == "mariadbd" else 30)


def status(dir: str | os.PathLike | None = None, *, port_base: int | None = None) -> dict:
    """{"daemons": {label: pid or None}, "sinfo": text or None, "healthy": bool}."""
    lay = Layout.of(dir, port_base)
    pids = {d.label: d.pid(lay) for d in daemons(lay)}
    sinfo = None
    states = None
    if pids["slurmctld"] is not None:
        res = _try(["sinfo"], lay, timeout=10)
        sinfo = res.stdout if res is not None and res.returncode == 0 else None
        states = node_states(lay)
    healthy = (all(p is not None for p in pids.values()) and states is not None
               and all(states.get(n) in USABLE_STATES for n in NODES))
    return {"dir": str(lay.dir), "slurm_conf": str(lay.slurm_conf), "daemons": pids,
            "sinfo": sinfo, "nodes": states, "healthy": healthy}


# --------------------------------------------------------------------------------------------
# install
# --------------------------------------------------------------------------------------------


def _pkg_installed(pkg: str) -> bool:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.strip() == "install ok installed"


def install() -> None:
    """apt-get the Debian packages that are not installed yet (Debian 12, as root)."""
    missing = [p for p in PACKAGES if not _pkg_installed(p)]
    if not missing:
        log(f"already installed: {' '.join(PACKAGES)}")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Packages must not start system services (munge, mariadb, slurm*) on machines whose
    # init would honour invoke-rc.d: we run private daemons instead. policy-rc.d exit 101
    # denies them; keep an existing policy file.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\n# temporary, from scripts/slurm_cluster.py install\nexit 101\n")
        policy.chmod(0o755)
    try:
        log(f"installing: {' '.join(missing)}")
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                       check=True, env=env)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if not is_installed():
        raise ClusterError(f"installed {' '.join(missing)} but some of "
                           f"{' '.join(REQUIRED_BINARIES)} are still missing")


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
        lay = Layout.of(args.dir, args.port_base)
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
