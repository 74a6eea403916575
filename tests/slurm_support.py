"""The ``slurm_cluster`` fixture: a real two-node Slurm cluster on this machine.

tests/conftest.py imports it, so a test only asks for it::

    @pytest.mark.slurm
    def test_something(slurm_cluster):
        ...  # os.environ["SLURM_CONF"] points at the cluster; sbatch/squeue/sacct just work

The cluster (scripts/slurm_cluster.py) is brought up once per session in ``$MIMO_SLURM_DIR``
if set, else in a fresh directory under /tmp on free ports, and torn down at the end of the
session unless ``MIMO_KEEP_SLURM=1`` (then ``scripts/slurm_cluster.py down --dir DIR`` stops it).
Tests are skipped, with the reason, when Slurm is not installed
(``scripts/slurm_cluster.py install``) or when not running as root.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.py"


def load_slurm_cluster_module():
    """scripts/slurm_cluster.py as a module (scripts/ is not a package)."""
    name = "mimo_slurm_cluster_script"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def slurm_cluster():
    sc = load_slurm_cluster_module()
    if not sc.is_installed():
        pytest.skip(f"Slurm is not installed (need {', '.join(sc.REQUIRED_BINARIES)}): "
                    f"run `python3 {SCRIPT.relative_to(SCRIPT.parents[1])} install` as root")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (its daemons run as root)")

    keep = os.environ.get("MIMO_KEEP_SLURM") == "1"
    if os.environ.get("MIMO_SLURM_DIR"):
        cluster_dir, created = Path(os.environ["MIMO_SLURM_DIR"]), False
        port_base = None  # $MIMO_SLURM_PORT_BASE, else the ports already configured there
    else:
        # Short path: unix socket paths live under it. 0755 so munged (user munge) gets in.
        cluster_dir, created = Path(tempfile.mkdtemp(prefix="mimo-slurm-", dir="/tmp")), True
        port_base = (int(os.environ["MIMO_SLURM_PORT_BASE"]) if os.environ.get("MIMO_SLURM_PORT_BASE")
                     else sc.free_port_base())

    old_conf = os.environ.get("SLURM_CONF")
    try:
        info = sc.up(cluster_dir, port_base=port_base)
    except Exception:
        try:  # don't leave half a cluster behind; its logs stay in cluster_dir
            sc.down(cluster_dir)
        except Exception as e:  # noqa: BLE001 - report the first error, not this one
            print(f"stopping the half-started cluster failed too: {e}", file=sys.stderr)
        raise
    os.environ["SLURM_CONF"] = info["slurm_conf"]
    try:
        yield info
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if keep:
            print(f"\nMIMO_KEEP_SLURM=1: Slurm cluster left running in {cluster_dir}; "
                  f"export SLURM_CONF={info['slurm_conf']}", file=sys.stderr)
        else:
            sc.down(cluster_dir)
            if created:
                shutil.rmtree(cluster_dir, ignore_errors=True)
