"""`list` and `status` read the registry and the run directory: an aligned table, sweeps
grouped under their array id, step/total, ETA, loss, tokens/s and the code's commit."""

import json
import re

from click.testing import CliRunner

from mimo_toolkit.cli import cli
from mimo_toolkit.jobs import JobRecord, record_submission
from mimo_toolkit.launch import write_job
from mimo_toolkit.resolve import resolve_job


def fake_run(run_dir, steps_done: int, steps: int = 10) -> None:
    write_job(resolve_job("llava", "tiny", sets=[f"train.steps={steps}"]), "slurm", run_dir)
    rows = [{"step": s, "loss": 5.0 - 0.1 * s, "tokens_per_s": 1000.0 + s, "step_time_s": 2.0, "time": 0.0}
            for s in range(1, steps_done + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_list_is_an_aligned_table_and_groups_sweeps(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMO_TOOLKIT_HOME", str(tmp_path / "home"))
    for i, done in enumerate((10, 4)):
        fake_run(tmp_path / f"sweep/seed={i}", done)
        record_submission(JobRecord(f"77_{i}", "slurm", str(tmp_path / f"sweep/seed={i}"), "llava-tiny", "llava",
                                    "tiny", 1.0e9, "77"))
    fake_run(tmp_path / "single", 3)
    record_submission(JobRecord("78", "slurm", str(tmp_path / "single"), "llava-tiny", "llava", "tiny", 1.0e9))
    monkeypatch.setenv("PATH", "/nonexistent")  # no squeue/sacct: states come from the run dirs
    lines = CliRunner().invoke(cli, ["list"]).output.splitlines()
    assert lines[0].split() == ["JOB", "SCHEDULER", "STATE", "STEP", "LOSS", "SUBMITTED", "NAME", "RUN", "DIR"]
    starts = {line.index("slurm") for line in lines[1:]}
    assert len(starts) == 1  # the columns line up
    assert re.match(r"77\s+slurm\s+2 RUNNING\s+.*sweep of 2: " + re.escape(str(tmp_path / "sweep")), lines[1])
    assert re.match(r"  77_0\s+slurm\s+RUNNING\s+10/10\s+4\.0000", lines[2]) and lines[3].startswith("  77_1 ")
    assert re.match(r"78\s+slurm\s+RUNNING\s+3/10\s+4\.7000", lines[4])

    status = CliRunner().invoke(cli, ["status", "78"]).output
    assert "progress:   step 3/10, loss 4.7000, 1003 tokens/s, ETA 14s" in status
    assert re.search(r"^code:       0\.1\.0 [0-9a-f]{12}", status, re.M), status
    both = CliRunner().invoke(cli, ["status", "77"]).output
    assert both.count("job:        77_") == 2
