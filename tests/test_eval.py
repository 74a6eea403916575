"""Evaluation: reading a checkpoint's full weights, training-time validation, ``mimo-toolkit eval``.

Reading a checkpoint written by another layout is checked where it matters: the validation
loss that a TP2 (or PP2) training job reports must be reproduced by the one-process TP1/PP1
model built from its checkpoint. The end-to-end test trains llava tiny on a small generated shapes set and
expects accuracy well above chance (the >= 95% run is ``scripts/shapes_demo.sh``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_support import write_truncated_jpeg
from dist_support import run_job

from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.runtime.eager import run_eagerly
from mimo_toolkit.runtime.datasets import build_file_dataset
from mimo_toolkit.runtime.datasets.batching import sample_index

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(Path(sys.executable).parent / "mimo-toolkit")


# ---- real runs --------------------------------------------------------------------------------------


def make_shapes(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts/make_shapes_dataset.py"), "--out", str(out), *args],
                   check=True, capture_output=True, timeout=120)
    return out


def data_sets(data: Path) -> list[str]:
    return ["data.source=llava", f"data.path={data / 'train.json'}", f"data.valid_path={data / 'valid.json'}"]


def evaluate(run_dir: Path, **kwargs) -> dict:
    """``mimo-toolkit eval`` in this process (one gloo rank, torn down afterwards)."""
    run_eagerly()
    from mimo_toolkit.runtime.eval.evaluate import evaluate_run

    return evaluate_run(str(run_dir), **kwargs)


def final_valid_loss(run) -> float:
    return [row["valid_loss"] for row in run.metrics if "valid_loss" in row][-1]


@pytest.mark.slow
def test_llava_tiny_learns_the_shapes_task_and_eval_reproduces_its_validation_loss(tmp_path):
    """llava tiny as shipped (LLM TP2, vision DP2 colocated) on generated colour questions: the
    validation loss falls, curves.png appears, and the one-process eval of the merged
    checkpoint gets the same validation loss and answers well above chance (20%)."""
    data = make_shapes(tmp_path / "data", "--seed", "1", "--train", "1000", "--valid", "40", "--categories", "color")
    run = run_job(tmp_path / "run", "llava", timeout=300, sets=[
        *data_sets(data), "train.seq_length=80", "train.steps=160", "train.micro_batch_size=16",
        "train.global_batch_size=32", "train.lr=1e-3", "train.min_lr=5e-5", "train.lr_warmup_steps=20",
        "train.eval_interval=40", "train.save_interval=0",
    ])
    assert run.returncode == 0, run.output[-3000:]
    valid = [row["valid_loss"] for row in run.metrics if "valid_loss" in row]
    assert len(valid) == 4 and valid[-1] < valid[0]
    assert all(row["bad_samples"] == 0 for row in run.metrics)
    assert (tmp_path / "run/curves.png").stat().st_size > 10_000

    proc = subprocess.run([SCRIPT, "eval", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run/eval.json").read_text())
    assert f"accuracy {100 * result['accuracy']:.1f}%" in proc.stdout
    assert result["total"] == 40 and result["step"] == 160
    assert result["valid_loss"] == pytest.approx(final_valid_loss(run), abs=1e-4)
    assert result["accuracy"] >= 0.8, result["predictions"][:5]  # chance: 20%


@pytest.mark.slow
def test_pipeline_stages_merge_and_bad_samples_are_counted(tmp_path):
    """LLM PP2 (vision DP2 on both ranks): the merged checkpoint reproduces the job's validation
    loss; a training file with a missing image trains on the rest and reports the count in
    every metrics row; text-only samples (vision replicas with no image in their slice) train
    and evaluate too. A truncated JPEG (passes the header check, fails to decode) sits in the
    slice of the vision replica on rank 0 while rank 1 computes the loss: it is dropped from
    the step's loss tokens (counted here independently), counted in bad_samples, and the
    single-process eval, which drops it by itself, still reproduces the job's validation loss."""
    data = make_shapes(tmp_path / "data", "--seed", "2", "--train", "64", "--valid", "16")
    write_truncated_jpeg(data / "images" / "cut.jpg")
    sets = [*data_sets(data), "train.seq_length=80", "train.steps=4", "train.eval_interval=4",
            "layout.llm.tp=1", "layout.llm.pp=2"]
    seed = resolve_job("llava", "tiny", sets=sets).config.train.seed
    truncated = {}
    for split in ("train", "valid"):
        records = json.loads((data / f"{split}.json").read_text())
        for record in records[1::3]:
            del record["image"]
            record["conversations"][0]["value"] = record["conversations"][0]["value"].replace("<image>\n", "")
        records[5]["image"] = "images/missing.png"
        good = [r for k, r in enumerate(records) if k != 5]
        # step 0's samples in training order (file order for validation); even offsets: vision replica 0
        order = [sample_index(p, len(good), seed) if split == "train" else p for p in range(8)]
        offset = next(p for p in range(0, 8, 2) if "image" in good[order[p]])
        good[order[offset]]["image"] = "images/cut.jpg"
        truncated[split] = (offset, good[order[offset]]["id"])
        (data / f"{split}.json").write_text(json.dumps(records))
    run = run_job(tmp_path / "run", "llava", timeout=300, sets=sets)
    assert run.returncode == 0, run.output[-3000:]
    assert "skipping 1 bad sample(s): sample train-00005: missing file" in run.output
    assert f"sample {truncated['train'][1]}: cannot decode" in run.output and "dropped from the loss" in run.output
    assert all(row["bad_samples"] == 2 for row in run.metrics)

    job = resolve_job("llava", "tiny", sets=sets).config
    dataset = build_file_dataset(job)
    step0 = [sum(dataset.get(sample_index(p, len(dataset), seed), ()).loss_mask) for p in range(8)]
    assert run.metrics[0]["loss_tokens"] == sum(step0) - step0[truncated["train"][0]]

    result = evaluate(tmp_path / "run")
    assert result["valid_loss"] == pytest.approx(final_valid_loss(run), abs=1e-5)
    assert (result["samples"], result["bad_samples"]) == (14, 2)

    stopped = run_job(tmp_path / "stop", "llava", timeout=120, sets=[*data_sets(data), "train.seq_length=80",
                                                                      "data.on_bad_sample=stop"])
    assert stopped.returncode != 0
    assert "sample train-00005: missing file" in stopped.output and "data.on_bad_sample=stop" in stopped.output
    assert not (tmp_path / "stop/metrics.jsonl").exists()


@pytest.mark.slow
def test_multi_encoder_eval_merges_every_module_and_ablates_audio(tmp_path):
    data = make_shapes(tmp_path / "data", "--seed", "3", "--train", "64", "--valid", "16", "--audio")
    run = run_job(tmp_path / "run", "multi_encoder", timeout=300, sets=[
        *data_sets(data), "train.seq_length=96", "train.steps=4", "train.eval_interval=2",
    ])
    assert run.returncode == 0, run.output[-3000:]
    full = evaluate(tmp_path / "run")
    assert full["valid_loss"] == pytest.approx(final_valid_loss(run), abs=1e-4)
    assert set(full["by_category"]) == {"color", "shape", "position", "number"}
    ablated = evaluate(tmp_path / "run", ablate="audio")
    assert ablated["ablate"] == "audio" and (tmp_path / "run/eval-ablate-audio.json").exists()
    assert ablated["valid_loss"] != pytest.approx(full["valid_loss"], abs=1e-6)


def test_eval_errors_are_one_line(tmp_path):
    """Wrong requests are refused before torch is imported (one line, exit 2, under a second)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", SCRIPT, "eval", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "mimo_toolkit.cli" in imported and not any(m.split(".")[0] in ("torch", "megatron") for m in imported)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == [f"mimo-toolkit: error: {tmp_path}: not a run directory (no job.json)"]
    from dist_support import write_job

    write_job(tmp_path, "llava")  # synthetic data, no checkpoint
    proc = subprocess.run([SCRIPT, "eval", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no data.valid_path (it trained on synthetic data); pass --data" in proc.stderr
    proc = subprocess.run([SCRIPT, "eval", str(tmp_path), "--data", "x.json", "--ablate", "audio"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--ablate audio: not an encoder of this job (vision)" in proc.stderr
