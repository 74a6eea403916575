"""`mimo-toolkit submit --scheduler local`: the real trainer through TorchX's local_cwd scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_submit_local_trains_with_rank_prefixed_logs_and_progress(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(BIN / "mimo-toolkit"), "submit", "llava", "--preset", "tiny", "--scheduler", "local",
         "--run-dir", str(run_dir), "--set", "train.steps=6"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "[rank0]" in out and "[rank1]" in out
    assert "[progress] step 6/6" in out
    assert "SUCCEEDED (6/6 steps)" in out
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert json.loads((run_dir / "exit_status.json").read_text())["reason"] == "completed"
    listed = subprocess.run([str(BIN / "mimo-toolkit"), "list"], capture_output=True, text=True, env=env).stdout
    assert "local" in listed and "COMPLETED" in listed and str(run_dir) in listed


def test_submit_local_exits_non_zero_when_the_job_fails(tmp_path):
    """The real console script on a job that refuses its data (a missing image under
    data.on_bad_sample=stop): the job fails at start, and so must `submit` (exit 1). The
    job runs from its code snapshot (cluster.snapshot): the traceback shows that copy."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    record = {"id": "missing-1", "image": "nowhere.png",
              "conversations": [{"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "a disc"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(BIN / "mimo-toolkit"), "submit", "llava", "--preset", "tiny", "--scheduler", "local",
         "--run-dir", str(run_dir), "--set", "data.source=llava", "--set", f"data.path={tmp_path / 'train.jsonl'}",
         "--set", "data.on_bad_sample=stop", "--set", "train.steps=2", "--set", "cluster.snapshot=true"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert ": FAILED (0/2 steps)" in out and "missing-1" in out, out[-3000:]
    assert json.loads((run_dir / "exit_status.json").read_text())["reason"] == "failed"
    assert proc.stdout.splitlines()[-1].startswith("local_cwd://")  # the job id, last on stdout
    first = subprocess.run([str(BIN / "mimo-toolkit"), "logs", str(run_dir), "--first-error"], capture_output=True,
                           text=True, env=env).stdout
    assert f'File "{run_dir}/snapshot/mimo_toolkit/' in first and "site-packages/mimo_toolkit" not in first, first
