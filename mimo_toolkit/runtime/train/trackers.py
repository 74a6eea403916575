"""Experiment trackers: each step's metrics row also goes to TensorBoard, W&B or MLflow.

``metrics.jsonl`` (``metrics.py``) is always written and stays the record the toolkit itself
reads; ``train.loggers`` adds trackers beside it, so a user's usual dashboards work without
a converter. Only rank 0 logs, and every tracker receives the same numbers the jsonl row holds
(nested values such as ``module_grad_norm.vision`` become ``module_grad_norm/vision``).

Each tracker names the run after the run directory and keeps one run across requeues:

* ``tensorboard``: event files in ``RUN_DIR/tensorboard``; a resumed attempt purges the steps
  after its checkpoint, so a requeue never leaves two values for one step.
* ``wandb``: ``RUN_DIR/wandb``, offline unless ``WANDB_MODE`` says otherwise or
  ``WANDB_API_KEY`` is set (no network needed; ``wandb sync RUN_DIR/wandb/offline-run-*``
  uploads later). The run id is derived from the run directory, so attempts resume one run.
* ``mlflow``: ``train.mlflow_tracking_uri`` or, by default, a file store in ``RUN_DIR/mlruns``
  (``mlflow ui --backend-store-uri RUN_DIR/mlruns``); the run id is kept in
  ``RUN_DIR/mlflow_run_id`` for requeued attempts.

The job's resolved config is logged as hyper-parameters, flattened to ``section.key``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from typing import Any, Protocol

from ...config import JobConfig
from ...run_dir import RunDir
#: Row keys that are not metrics.
_NOT_METRICS = ("step", "time")


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def tracker_names(job: JobConfig) -> list[str]:
    """The trackers this job uses: ``train.loggers``, or TensorBoard when it is installed."""
    if job.train.loggers is not None:
        return list(job.train.loggers)
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


def scalars_of(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row, nested dicts flattened with '/' (None and text dropped)."""
    out: dict[str, float] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for sub, v in value.items():
                add(f"{key}/{sub}", v)
        elif isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)):
            out[key] = float(value)

    for key, value in row.items():
        if key not in _NOT_METRICS:
            add(key, value)
    return out


def hyperparameters(job: JobConfig) -> dict[str, str | float | int | bool]:
    """The resolved config as flat ``section.key`` hyper-parameters (lists as JSON text)."""
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, v in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), v)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)

    add("", job.to_dict())
    return flat


def open_trackers(job: JobConfig, run_dir: RunDir, rank: int, resumed_step: int) -> list[Tracker]:
    """The trackers of this job on rank 0 (none on other ranks)."""
    if rank != 0:
        return []
    opened: list[Tracker] = []
    for name in tracker_names(job):
        opened.append(_OPENERS[name](job, run_dir, resumed_step))
    return opened


def log_all(trackers: Iterable[Tracker], row: dict[str, Any]) -> None:
    scalars = scalars_of(row)
    for tracker in trackers:
        tracker.log(int(row["step"]), scalars)


class TensorBoardTracker:
    def __init__(self, job: JobConfig, run_dir: RunDir, resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(
            log_dir=str(run_dir.path / "tensorboard"),
            purge_step=resumed_step + 1 if resumed_step else None,
        )
        if not resumed_step:
            for summary in hparams(hyperparameters(job), {}):
                self.writer.file_writer.add_summary(summary)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, job: JobConfig, run_dir: RunDir, resumed_step: int) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=job.train.wandb_project,
            name=run_dir.path.name,
            id=run_id(run_dir),
            resume="allow",
            dir=str(run_dir.path),
            config=hyperparameters(job),
            mode=mode,
            # our own logs capture stdout; W&B's console capture and system sampler would
            # duplicate the lines and add a thread per rank-0 process.
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    RUN_ID_FILE = "mlflow_run_id"

    def __init__(self, job: JobConfig, run_dir: RunDir, resumed_step: int) -> None:
        uri = job.train.mlflow_tracking_uri or (run_dir.path / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store for existing users behind this switch; a local
            # store needs no server, which is what a batch job on a cluster has.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(job.train.mlflow_experiment or job.recipe)
        id_file = run_dir.path / self.RUN_ID_FILE
        previous = id_file.read_text().strip() if id_file.exists() else None
        self.run = mlflow.start_run(run_id=previous, run_name=None if previous else run_dir.path.name)
        if previous is None:
            id_file.write_text(self.run.info.run_id + "\n")
            params = hyperparameters(job)
            items = [(k, str(v)[:500]) for k, v in params.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 per call
                mlflow.log_params(dict(items[start : start + 100]))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def run_id(run_dir: RunDir) -> str:
    """A stable tracker run id for one run directory (all its attempts)."""
    return "mimo-" + hashlib.sha256(str(run_dir.path).encode()).hexdigest()[:16]


_OPENERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}
