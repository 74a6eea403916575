"""The cluster as a whole: up (idempotent), down, status, info."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import time
from pathlib import Path

from .conf import hostname, real_memory_mb, render_slurm_conf, render_slurmdbd_conf
from .paths import ClusterPaths, merge_path, port_free
from .processes import Daemon, alive, daemons, try_run, wait_for
from .settings import (
    CLUSTER_NAME,
    CRED_EXPIRE_S,
    CPUS_PER_NODE,
    KILL_WAIT_S,
    NODES,
    PARTITION,
    PARTITIONS,
    REQUIRED_BINARIES,
    UP_TIMEOUT_S,
    ClusterError,
    log,
)
from .starters import STARTERS, db_password

# --------------------------------------------------------------------------------------------

# sinfo %t states in which a node runs (or can run) jobs.
USABLE_STATES = {"idle", "mix", "alloc", "comp"}


def node_states(lay: ClusterPaths) -> dict[str, str] | None:
    res = try_run(["sinfo", "-h", "-N", "-o", "%N %t"], lay)
    if res is None or res.returncode != 0:
        return None
    states = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def sacct_ok(lay: ClusterPaths) -> bool:
    res = try_run(["sacct", "-n", "-X", "-o", "JobID"], lay)
    return res is not None and res.returncode == 0


def resume_drained(lay: ClusterPaths, states: dict[str, str]) -> None:
    for node, state in states.items():
        if state.rstrip("*~#!%$@^-") in ("drain", "drng", "fail", "failg"):
            log(f"{node} is {state}: resuming it")
            try_run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], lay)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def is_installed() -> bool:
    path = merge_path(os.environ.get("PATH", ""))
    return all(shutil.which(b, path=path) for b in REQUIRED_BINARIES)


def info(dir: str | os.PathLike | None = None, port_base: int | None = None) -> dict:
    lay = ClusterPaths.of(dir, port_base)
    return {
        "dir": str(lay.dir),
        "slurm_conf": str(lay.slurm_conf),
        "env": {"SLURM_CONF": str(lay.slurm_conf)},
        "cluster": CLUSTER_NAME,
        "partition": PARTITION,
        "partitions": {name: list(nodes) for name, nodes in PARTITIONS.items()},
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
def _locked(lay: ClusterPaths):
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
    lay = ClusterPaths.of(dir, port_base)
    if len(str(lay.munge_socket)) > 100 or len(str(lay.mysql_socket)) > 100:
        raise ClusterError(f"{lay.dir} is too long for a unix socket path; pick a shorter --dir")
    with _locked(lay):
        return _up(lay, timeout)


def _up(lay: ClusterPaths, timeout: float) -> dict:
    t0 = time.monotonic()
    host = hostname()
    for p in (lay.run, lay.logs, lay.state, lay.munge_dir, *(lay.spool(n) for n in NODES)):
        p.mkdir(parents=True, exist_ok=True)
    os.chmod(lay.dir, 0o755)  # munged runs as user munge and must reach its directory

    slurm_conf = render_slurm_conf(lay, host, real_memory_mb())
    dbd_conf = render_slurmdbd_conf(lay, host, db_password(lay))
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
        resume_drained(lay, states)
        if all(states.get(n) in USABLE_STATES for n in NODES):
            return states
        return None

    remaining = max(10.0, timeout - (time.monotonic() - t0))
    ctld = next(d for d in daemons(lay) if d.name == "slurmctld")
    states = wait_for(f"nodes {', '.join(NODES)} to be idle in sinfo", nodes_ready, remaining, ctld, lay)
    wait_for("sacct to answer", lambda: sacct_ok(lay), 30)
    log(f"cluster {CLUSTER_NAME!r} is up in {lay.dir} ({time.monotonic() - t0:.1f}s; "
        f"{'started ' + ', '.join(started) if started else 'already running'}); "
        f"nodes: {', '.join(f'{n}={s}' for n, s in states.items())}")
    return info(lay.dir, lay.port_base)


def _cancel_jobs(lay: ClusterPaths, timeout: float) -> None:
    res = try_run(["squeue", "-h", "-o", "%A"], lay, timeout=10)
    if res is None or res.returncode != 0:
        return
    jobs = res.stdout.split()
    if not jobs:
        return
    log(f"cancelling {len(jobs)} job(s): {' '.join(jobs)}")
    try_run(["scancel", *jobs], lay)

    def drained():
        r = try_run(["squeue", "-h", "-o", "%A"], lay, timeout=10)
        return r is not None and r.returncode == 0 and not r.stdout.split()

    try:
        wait_for("cancelled jobs to end", drained, timeout)
    except ClusterError as e:
        log(f"warning: {e}")


def _stop(lay: ClusterPaths, group: list[Daemon], timeout: float = 30) -> None:
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
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for label, pid in pids.items():
        if alive(pid):
            log(f"{label} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(f"{label} to die", lambda: not alive(pid), 10)
        log(f"stopped {label} (pid {pid})")


def down(dir: str | os.PathLike | None = None, *, purge: bool = False,
         port_base: int | None = None) -> None:
    """Stop the daemons this tool started in dir (pid files), in reverse start order.

    Jobs still queued or running are cancelled first so that no job processes outlive the
    cluster. The directory (logs) is kept unless purge is true.
    """
    lay = ClusterPaths.of(dir, port_base)
    if not lay.dir.is_dir():
        return
    with _locked(lay):
        _down(lay)
        if purge:
            shutil.rmtree(lay.dir)
            log(f"removed {lay.dir}")


def _down(lay: ClusterPaths) -> None:
    ds = daemons(lay)
    by_name = {d.label: d for d in ds}
    if by_name["slurmctld"].pid(lay) is not None and any(d.pid(lay) for d in ds if d.node):
        _cancel_jobs(lay, timeout=KILL_WAIT_S + 10)
    _stop(lay, [d for d in ds if d.node])
    for name in ("slurmctld", "slurmdbd", "mariadbd", "munged"):
        _stop(lay, [by_name[name]], timeout=60 if name == "mariadbd" else 30)


def status(dir: str | os.PathLike | None = None, *, port_base: int | None = None) -> dict:
    """{"daemons": {label: pid or None}, "sinfo": text or None, "healthy": bool}."""
    lay = ClusterPaths.of(dir, port_base)
    pids = {d.label: d.pid(lay) for d in daemons(lay)}
    sinfo = None
    states = None
    if pids["slurmctld"] is not None:
        res = try_run(["sinfo"], lay, timeout=10)
        sinfo = res.stdout if res is not None and res.returncode == 0 else None
        states = node_states(lay)
    healthy = (all(p is not None for p in pids.values()) and states is not None
               and all(states.get(n) in USABLE_STATES for n in NODES))
    return {"dir": str(lay.dir), "slurm_conf": str(lay.slurm_conf), "daemons": pids,
            "sinfo": sinfo, "nodes": states, "healthy": healthy}

