"""Experiment trackers: what a run writes to TensorBoard, W&B (offline) and MLflow is read back
with each tool's own reader and must equal metrics.jsonl."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from mimo_toolkit.cli import main
from mimo_toolkit.config import JobConfig
from mimo_toolkit.recipe import load_recipe
from mimo_toolkit.runtime.train.trackers import hyperparameters, scalars_of

from dist_support import run_job


def test_rows_flatten_to_scalars_and_config_to_hyperparameters():
    row = {"step": 3, "time": 1.0, "loss": 2.5, "module_grad_norm": {"vision": 0.5, "llm": 1.5},
           "mfu": None, "skipped": False, "bridge_bytes": {"forward": 10}}
    assert scalars_of(row) == {"loss": 2.5, "module_grad_norm/vision": 0.5, "module_grad_norm/llm": 1.5,
                               "skipped": 0.0, "bridge_bytes/forward": 10.0}
    job: JobConfig = load_recipe("llava").build("tiny")
    params = hyperparameters(job)
    assert params["train.lr"] == job.train.lr
    assert params["layout.module_parallelisms.llm.tp"] == job.layout.language.tp
    assert all(isinstance(v, (str, int, float, bool)) for v in params.values())


@pytest.mark.parametrize("value, message", [
    ("foo", "train.loggers: unknown logger 'foo'; expected any of tensorboard, wandb, mlflow"),
    ("tensorboard,neptune", "unknown logger 'neptune'"),
])
def test_unknown_logger_is_refused_and_nothing_is_written(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["render", "llava", "--preset", "tiny", "--scheduler", "slurm", "-o", str(out),
              "--set", f"train.loggers={value}"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_logger_that_is_not_installed_is_refused(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        main(["show", "llava", "--preset", "tiny", "--set", "train.loggers=wandb"])
    assert exc.value.code == 2
    assert "the 'wandb' package is not installed (pip install 'mimo-toolkit[wandb]'" in capsys.readouterr().err


# ---- one real run, read back with each tool -------------------------------------------------

KEYS = ("loss", "lr", "grad_norm", "module_grad_norm/vision", "module_grad_norm/llm", "tokens_per_s")


@pytest.mark.slow
def test_trackers_receive_the_rows_of_metrics_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = run_job(tmp_path / "run", "llava", sets=[
        "train.steps=3", "train.eval_interval=3", "train.loggers=tensorboard,wandb,mlflow",
    ], timeout=400)
    assert run.returncode == 0, run.output[-3000:]
    rows = run.metrics
    assert [r["step"] for r in rows] == [1, 2, 3] and "valid_loss" in rows[-1]
    expected = {key: [scalars_of(r)[key] for r in rows] for key in KEYS}
    expected["valid_loss"] = [rows[-1]["valid_loss"]]
    for reader in (_tensorboard, _wandb, _mlflow):
        series, params = reader(run.run_dir.path)
        for key, values in expected.items():
            got = series[key]
            steps = [1, 2, 3] if key != "valid_loss" else [3]
            assert [s for s, _ in got] == steps, (reader.__name__, key, got)
            assert [v for _, v in got] == pytest.approx(values, rel=1e-6), (reader.__name__, key)
        assert float(params["train.lr"]) == pytest.approx(0.002), reader.__name__
        assert params["recipe"] == "llava", reader.__name__


def _tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    params = {k: (v.string_value or v.number_value) for k, v in info.hparams.items()}
    return series, params


def _wandb(run_dir: Path):
    """Read the offline run's record log (a LevelDB-style log of wandb Record protos)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # rank 0 only: exactly one run
    series: dict[str, list] = {}
    params: dict[str, str] = {}
    for blob in _leveldb_records(path.read_bytes()):
        record = pb.Record.FromString(blob)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    series.setdefault(key, []).append((items["_step"], value))
        elif kind == "run":
            for item in record.run.config.update:
                value = json.loads(item.value_json)
                params[item.key] = value["value"] if isinstance(value, dict) and "value" in value else value
    return series, params


def _leveldb_records(data: bytes) -> list[bytes]:
    block, pos, pending, out = 32768, 7, b"", []  # 7-byte file header ":W&B" + magic + version
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            out.append(pending)
            pending = b""
    return out


def _mlflow(run_dir: Path):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient((run_dir / "mlruns").as_uri())
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == run_dir.name
    series = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
              for key in run.data.metrics}
    return series, run.data.params
