"""The local two-node Slurm cluster of scripts/slurm_cluster.py, exercised for real.

Needs the Debian packages (`scripts/slurm_cluster.py install`) and root; skipped otherwise.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_support import SCRIPT, load_slurm_cluster_module

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def run(*cmd: str, timeout: float = 30) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def wait_for(what: str, check, timeout: float = 30, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sacct_state(job_id: str) -> str:
    """The job's state in the accounting database (first word: 'CANCELLED by 0' -> CANCELLED)."""
    out = run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
    lines = out.split()
    return lines[0] if lines else ""


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_two_node_batch_job_completes_in_sacct(slurm_cluster, tmp_path):
    out = tmp_path / "hostname-%j.out"
    job = run("sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2",
              f"--output={out}", "--wrap",
              "srun hostname; srun -l printenv SLURMD_NODENAME >&2").strip().split(";")[0]
    wait_for(f"job {job} COMPLETED in sacct", lambda: sacct_state(job) == "COMPLETED")
    text = Path(str(out).replace("%j", job)).read_text()
    # (srun may note "step creation temporarily disabled" while the first step winds down)
    hostnames = [line for line in text.splitlines() if not line.startswith(("0:", "1:", "srun:"))]
    assert len(hostnames) == 2, text
    # One task on each of the two slurmd daemons.
    assert sorted(line.split(": ")[1] for line in text.splitlines()
                  if line.startswith(("0:", "1:"))) == ["node1", "node2"], text


def test_node_address_for_rendezvous(slurm_cluster):
    out = run("scontrol", "show", "node", "node1")
    assert "NodeAddr=127.0.0.1" in out, out
    assert "NodeName=node1" in out
    nodes = run("sinfo", "-h", "-N", "-o", "%N").split()
    assert sorted(set(nodes)) == ["node1", "node2"]
    # one partition per node besides the default one (heterogeneous jobs use them)
    partitions = sorted(run("sinfo", "-h", "-o", "%P %N").splitlines())
    assert partitions == ["debug* node[1-2]", "first node1", "second node2"], partitions


def test_requeue_reruns_then_scancel(slurm_cluster, tmp_path):
    out = tmp_path / "requeue.out"
    script = tmp_path / "requeue.sh"
    script.write_text("#!/bin/bash\n"
                      'echo "restart=${SLURM_RESTART_COUNT:-0}"\n'
                      "exec sleep 300\n")
    job = run("sbatch", "--parsable", "--nodes=1", "--requeue", "--open-mode=append",
              f"--output={out}", str(script)).strip().split(";")[0]
    wait_for("first run", lambda: "restart=0" in read(out))
    run("scontrol", "requeue", job)
    # SIGTERM ends `sleep` at once; the job is then held for cred_expire + 1 s (11 s here).
    wait_for("the requeued run", lambda: "restart=1" in read(out), timeout=40)
    runs = [line for line in read(out).splitlines() if line.startswith("restart=")]
    assert runs == ["restart=0", "restart=1"], read(out)
    assert "DUE TO JOB REQUEUE" in read(out)
    run("scancel", job)
    wait_for(f"job {job} CANCELLED in sacct", lambda: sacct_state(job) == "CANCELLED")
    assert job not in run("squeue", "-h", "-o", "%i").split()


def test_down_then_up_is_idempotent(slurm_cluster):
    """Runs last in this module: stops the shared cluster and brings it back."""
    sc = load_slurm_cluster_module()
    cluster_dir = slurm_cluster["dir"]
    before = sc.status(cluster_dir)
    assert before["healthy"], before

    sc.down(cluster_dir)
    after_down = sc.status(cluster_dir)
    assert not after_down["healthy"]
    assert all(pid is None for pid in after_down["daemons"].values()), after_down
    cli = [sys.executable, str(SCRIPT)]
    res = subprocess.run([*cli, "status", "--dir", cluster_dir], capture_output=True, text=True)
    assert res.returncode == 1 and "not running" in res.stdout, res.stdout

    info = sc.up(cluster_dir)
    assert info["slurm_conf"] == slurm_cluster["slurm_conf"]
    pids = sc.status(cluster_dir)["daemons"]
    assert all(pids.values()), pids
    # A second `up` (the CLI this time) keeps the same daemons and ends with the export line.
    res = subprocess.run([*cli, "up", "--dir", cluster_dir], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == f"export SLURM_CONF={slurm_cluster['slurm_conf']}"
    assert sc.status(cluster_dir)["daemons"] == pids
    res = subprocess.run([*cli, "status", "--dir", cluster_dir], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "idle" in res.stdout
