"""Starting each daemon of the cluster, in order: munged, MariaDB, slurmdbd, slurmctld,
slurmd (one per node)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
from pathlib import Path

from .paths import ClusterPaths
from .processes import Daemon, connectable, run, spawn, try_run, wait_for
from .settings import CLUSTER_NAME, DB_NAME, DB_USER, log


def start_munged(lay: ClusterPaths, d: Daemon) -> None:
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
    spawn(["munged", f"--key-file={lay.munge_key}", f"--socket={lay.munge_socket}",
            f"--pid-file={lay.munge_pid}", f"--log-file={lay.munge_log}",
            f"--seed-file={lay.munge_seed}", "--num-threads=4"],
           lay, lay.logs / "munged.start.log", user=munge.pw_uid, group=munge.pw_gid,
           extra_groups=[], cwd=lay.munge_dir)
    wait_for("the munge socket", lambda: connectable(str(lay.munge_socket)), 20, d, lay)


def db_password(lay: ClusterPaths) -> str:
    if lay.db_password_file.exists():
        return lay.db_password_file.read_text().strip()
    pw = secrets.token_hex(16)
    with open(os.open(lay.db_password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(pw + "\n")
    return pw


def start_mariadbd(lay: ClusterPaths, d: Daemon) -> None:
    if not (lay.mysql_data / "mysql").is_dir():
        if lay.mysql_data.exists():
            shutil.rmtree(lay.mysql_data)  # a half-finished earlier install
        log("initialising MariaDB data directory")
        run(["mariadb-install-db", "--no-defaults", f"--datadir={lay.mysql_data}", "--user=root",
              "--auth-root-authentication-method=socket", "--skip-test-db",
              "--skip-name-resolve"], lay, timeout=120, cwd=lay.dir)
    lay.mysql_socket.unlink(missing_ok=True)
    spawn(["setsid", "-f", "mariadbd", "--no-defaults", f"--datadir={lay.mysql_data}",
            f"--socket={lay.mysql_socket}", f"--port={lay.mysql_port}", "--bind-address=127.0.0.1",
            f"--pid-file={lay.mysql_pid}", f"--log-error={lay.mysql_log}", "--user=root",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M", "--innodb-lock-wait-timeout=900",
            "--innodb-flush-log-at-trx-commit=2"],
           lay, lay.logs / "mariadbd.start.log", cwd=lay.dir)
    wait_for("MariaDB's socket", lambda: connectable(str(lay.mysql_socket)), 60, d, lay)
    pw = db_password(lay)
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
    run(["mariadb", "--no-defaults", f"--socket={lay.mysql_socket}", "-uroot"], lay, input=sql)


def start_slurmdbd(lay: ClusterPaths, d: Daemon) -> None:
    spawn(["slurmdbd"], lay, lay.logs / "slurmdbd.start.log", cwd=lay.dir)
    wait_for("slurmdbd's port", lambda: connectable(("127.0.0.1", lay.dbd_port)), 60, d, lay)

    def clusters():
        res = try_run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], lay)
        return res if res is not None and res.returncode == 0 else None

    res = wait_for("sacctmgr to answer", clusters, 60, d, lay)
    if CLUSTER_NAME not in res.stdout.split():
        log(f"registering cluster {CLUSTER_NAME!r} with slurmdbd")
        run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], lay)


def start_slurmctld(lay: ClusterPaths, d: Daemon) -> None:
    spawn(["slurmctld", "-f", str(lay.slurm_conf)], lay, lay.logs / "slurmctld.start.log",
           cwd=lay.dir)

    def ping():
        res = try_run(["scontrol", "ping"], lay)
        return res is not None and res.returncode == 0 and " is UP" in res.stdout

    wait_for("slurmctld to answer `scontrol ping`", ping, 60, d, lay)


def start_slurmd(lay: ClusterPaths, d: Daemon) -> None:
    spawn(["slurmd", "-f", str(lay.slurm_conf), "-N", d.node], lay,
           lay.logs / f"slurmd-{d.node}.start.log", cwd=lay.dir)


STARTERS = {"munged": start_munged, "mariadbd": start_mariadbd, "slurmdbd": start_slurmdbd,
            "slurmctld": start_slurmctld, "slurmd": start_slurmd}

