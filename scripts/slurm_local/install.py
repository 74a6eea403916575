"""apt-get the Debian packages of the local cluster (Debian 12, root)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .lifecycle import is_installed
from .settings import PACKAGES, REQUIRED_BINARIES, ClusterError, log


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

