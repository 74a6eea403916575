"""The whole job lifecycle on a real Slurm cluster (two slurmd nodes on this machine).

Submit through the CLI, train on both nodes, follow the job with list/status/logs, cancel
it, preempt it (`scontrol requeue`, and the template's time-limit signal) and check that
training resumes exactly, kill a rank and find it with `logs --first-error`, and refuse an
allocation that does not fit the layout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_support import run_job, worker_pid
from test_runtime import assert_same_losses

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "mimo-toolkit"), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"mimo-toolkit {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def submit(run_dir: Path, *sets: str, nodes: int = 2) -> str:
    args = ["submit", "llava", "--preset", "tiny", "--scheduler", "slurm", "--nodes", str(nodes), "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    return cli(*args).stdout.strip().splitlines()[-1]


def sacct_state(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "State"], capture_output=True, text=True).stdout
    states = [line.split()[0] for line in out.splitlines() if line.strip()]
    return states[-1] if states else "UNKNOWN"


def wait_state(job: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sacct_state(job)
        if state in TERMINAL:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} still {sacct_state(job)} after {timeout} s")


def wait_step(run_dir: Path, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists():
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            if rows and rows[-1]["step"] >= step:
                return
        time.sleep(0.5)
    raise AssertionError(f"step {step} not reached")


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_two_node_job_completes_and_is_listed(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(run_dir, "train.steps=8")
    assert job.isdigit()
    assert wait_state(job) == "COMPLETED", (run_dir / "logs").glob("*")
    nodes = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "NodeList"], capture_output=True, text=True).stdout
    assert "node[1-2]" in nodes
    assert steps_logged(run_dir) == list(range(1, 9))
    assert (run_dir / "checkpoints/latest").read_text().strip() == "step-00000008"
    listed = cli("list").stdout
    assert re.search(rf"^{job}\s+slurm\s+COMPLETED\s+8/8", listed, re.M), listed
    status = cli("status", job).stdout
    assert "state:      COMPLETED" in status and "step 8/8" in status
    assert "step 8/8" in cli("logs", job, "--rank", "0").stdout
    assert "no rank of job" in cli("logs", job, "--first-error").stdout


def test_scontrol_requeue_resumes_exactly(slurm_cluster, tmp_path):
    sets = ("train.steps=24", "train.save_interval=0")
    run_dir = tmp_path / "run"
    job = submit(run_dir, *sets)
    wait_step(run_dir, 6)
    subprocess.run(["scontrol", "requeue", job], check=True)
    assert wait_state(job, timeout=300) == "COMPLETED"
    logs = "".join(p.read_text() for p in sorted((run_dir / "logs").glob("slurm-*.out")))
    assert "SIGTERM received: saved step" in logs and "resumed from step" in logs, logs[-3000:]
    assert steps_logged(run_dir) == list(range(1, 25))
    # The uninterrupted reference: the same job (2 nodes x 2 ranks) under torchrun on this machine.
    reference = run_job(tmp_path / "ref", "llava", sets=list(sets), nodes=2)
    assert reference.returncode == 0, reference.output[-3000:]
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert_same_losses(losses, reference.losses, tol=1e-6)


def wait_log(run_dir: Path, pattern: str, timeout: float) -> re.Match:
    """The first match of ``pattern`` in the job's per-attempt Slurm logs, waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = "".join(p.read_text() for p in sorted((run_dir / "logs").glob("slurm-*.out")))
        if match := re.search(pattern, logs):
            return match
        time.sleep(1)
    raise AssertionError(f"{pattern!r} not in the logs after {timeout} s:\n{logs[-3000:]}")


def test_time_limit_signal_requeues_and_resumes(slurm_cluster, tmp_path):
    """A 2-minute limit with --signal=B:USR2@60: Slurm warns the batch script 60-90 s into the
    attempt (its timer has a 30 s resolution), the ranks save, the script requeues, the next
    attempt resumes from the saved step; then the job is cancelled (a requeued job that runs
    to completion, with losses equal to an uninterrupted run, is test_scontrol_requeue_resumes_exactly).
    The job has far more steps than fit in the limit, so the test does not depend on this
    machine's speed."""
    run_dir = tmp_path / "run"
    job = submit(run_dir, "train.steps=100000", "train.save_interval=0", "cluster.time=00:02:00",
                 "cluster.signal=USR2@60", "cluster.max_restarts=5")
    saved = wait_log(run_dir, r"SIGUSR2 received: saved step (\d+)", timeout=200).group(1)
    wait_log(run_dir, "received SIGUSR2(.|\n)*preempted; requeueing", timeout=30)
    wait_log(run_dir, f"resumed from step {saved} ", timeout=120)
    cli("cancel", job)
    assert wait_state(job, timeout=60) == "CANCELLED"
    steps = steps_logged(run_dir)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= int(saved) > 0


def test_killed_rank_fails_the_job_and_is_named(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(run_dir, "train.steps=2000")
    wait_step(run_dir, 3)
    os.kill(worker_pid(3), signal.SIGKILL)  # rank 3 runs on the second node
    start = time.monotonic()
    state = wait_state(job, timeout=90)
    assert state == "FAILED" and time.monotonic() - start < 60
    first = cli("logs", job, "--first-error", check=False)
    assert first.returncode == 1 and "rank 3 failed first" in first.stdout, first.stdout


def test_cancel(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(run_dir, "train.steps=2000")
    wait_step(run_dir, 2)
    assert f"cancelled Slurm job {job}" in cli("cancel", job).stdout
    assert wait_state(job, timeout=60) == "CANCELLED"
    time.sleep(3)
    assert sacct_state(job) == "CANCELLED"  # not requeued


def test_allocation_that_does_not_fit_fails_in_seconds(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    cli("render", "llava", "--preset", "tiny", "--scheduler", "slurm", "--nodes", "2", "-o", str(run_dir))
    out = subprocess.run(["sbatch", "--parsable", "--nodes=1", str(run_dir / "launch/job.sbatch")], capture_output=True,
                         text=True, check=True).stdout.strip()
    start = time.monotonic()
    assert wait_state(out, timeout=60) == "FAILED"
    assert time.monotonic() - start < 30
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("*"))  # the check runs before the per-attempt log
    assert "rendered for 2 node(s) but the job has 1" in log
    assert not (run_dir / "metrics.jsonl").exists()


def test_torchx_slurm_scheduler(slurm_cluster, tmp_path):
    """The same job through TorchX's slurm scheduler (one node: TorchX 0.7 rendezvouses on the
    node's hostname, which does not resolve for this machine's second virtual node)."""
    run_dir = tmp_path / "run"
    proc = cli("submit", "llava", "--preset", "tiny", "--scheduler", "torchx", "--run-dir", str(run_dir),
               "--set", "train.steps=6", "--set", "cluster.partition=debug")
    handle = re.search(r"slurm://\S+/(\d+)", proc.stdout + proc.stderr)
    assert handle, proc.stdout + proc.stderr
    assert wait_state(handle.group(1)) == "COMPLETED"
    assert steps_logged(run_dir) == list(range(1, 7))


HETJOB = ["layout.mode=heterogeneous", "layout.vision.dp=1", "layout.llm.tp=1", "layout.llm.dp=1",
          "layout.llm.rank_offset=1", "cluster.procs_per_node=1", "cluster.nodes=2", "cluster.hetjob=true",
          "cluster.groups.vision.partition=first", "cluster.groups.llm.partition=second"]


def test_hetjob_puts_each_module_on_its_own_partition(slurm_cluster, tmp_path):
    """A heterogeneous layout as a Slurm heterogeneous job: the vision encoder's node from
    partition `first`, the LLM's from `second`; each rank lands on its module's node."""
    run_dir = tmp_path / "run"
    args = ["submit", "llava", "--preset", "tiny", "--scheduler", "slurm", "--run-dir", str(run_dir)]
    for s in [*HETJOB, "train.steps=3", "cluster.srun_extra=--label"]:
        args += ["--set", s]
    job = cli(*args).stdout.strip().splitlines()[-1]
    assert wait_state(job) == "COMPLETED"
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,Partition,NodeList,State"],
                         capture_output=True, text=True).stdout.split()
    assert out == [f"{job}+0|first|node1|COMPLETED", f"{job}+1|second|node2|COMPLETED"], out
    assert steps_logged(run_dir) == [1, 2, 3]
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("slurm-*.out"))
    # srun --label (cluster.srun_extra) prefixes each line with its task: task 0 runs on the
    # first component's node (vision, rank 0), task 1 on the second's (LLM, rank 1).
    assert "0: [rank0]" in log and "1: [rank1]" in log and "1: [rank0]" not in log, log[-3000:]


def test_sweep_is_one_job_array(slurm_cluster, tmp_path):
    """--sweep: the cross product as ONE job array, one run directory per element named
    after its values; list groups the elements under the array id, status takes it."""
    run_dir = tmp_path / "sweep"
    array = cli("submit", "llava", "--preset", "tiny", "--scheduler", "slurm", "--run-dir", str(run_dir),
                "--set", "train.steps=1", "--sweep", "train.lr=1e-3,5e-4").stdout.strip().splitlines()[-1]
    assert array.isdigit()
    assert [wait_state(f"{array}_{i}") for i in (0, 1)] == ["COMPLETED", "COMPLETED"]
    for name, lr in (("lr=1e-3", 1e-3), ("lr=5e-4", 5e-4)):
        assert steps_logged(run_dir / name) == [1]
        assert json.loads((run_dir / name / "job.json").read_text())["job"]["train"]["lr"] == lr
    listed = cli("list").stdout
    assert re.search(rf"^{array}\s+slurm\s+2 COMPLETED\s", listed, re.M), listed
    assert re.search(rf"^  {array}_1\s+slurm\s+COMPLETED\s+1/1\s", listed, re.M), listed
    status = cli("status", array).stdout
    assert status.count("state:      COMPLETED") == 2 and str(run_dir / "lr=5e-4") in status
