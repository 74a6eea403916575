"""A run directory's checkpoints, read without torch: the newest one, whether its files are all
there, and whether a changed config may resume it (the resume guard).

Layout (written by ``mimo_toolkit.runtime.train.checkpoint``)::

    checkpoints/
      latest                   names the newest complete checkpoint (replaced atomically)
      step-00000010/           one torch.distributed.checkpoint directory per save
        .metadata              DCP's index of every tensor's chunks
        __0_0.distcp ...       one data file per rank that wrote something
        meta.json              written last: step, config, the files above with their sizes
      frozen-<hash>/           frozen parameters, written once per run (same format)

``meta.json`` lists every file of the checkpoint with its size, so a missing or truncated
file is found here, before the job creates a process group, and reported in one line.

The resume guard compares the config that wrote the checkpoint with the new one, key by key.
Keys that a checkpoint survives (how long to train, intervals, the LR schedule, the layout,
node count, cluster settings, the optimizer's sharding, recompute) may change; a change of
the model itself (architecture, vocabulary, the set of modules, freezing, precision) means
the checkpoint cannot be loaded, and any other change (seed, batch, data) would resume a
different run, so it needs ``--force``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .run_dir import RunDir

FORMAT = "torch.distributed.checkpoint/1"
META = "meta.json"
LATEST = "latest"
DCP_INDEX = ".metadata"

#: Config keys a checkpoint survives (prefixes of dotted keys of ``JobConfig.to_dict()``).
RESUMABLE = (
    "train.steps", "train.save_interval", "train.keep_checkpoints", "train.log_interval",
    "train.eval_interval", "train.timeout_s", "train.lr", "train.min_lr", "train.lr_warmup_steps",
    "train.lr_schedule", "train.lr_decay_steps", "train.micro_batch_size", "train.distributed_optimizer", "train.recompute",
    "train.async_save", "layout.deployment_mode", "layout.module_parallelisms", "cluster.", "env.",
    "job_name", "overrides", "recipe", "preset", "data.valid_path", "data.media_root", "data.on_bad_sample",
)
#: Keys whose change means the checkpoint does not fit the model at all.
INCOMPATIBLE = ("model.", "layout.language_module", "layout.special_token_ids", "freeze.", "train.precision",
                "data.tokenizer")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class CheckpointInfo:
    """One complete checkpoint directory and its ``meta.json``."""

    path: Path
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> dict | None:
        return self.meta.get("config")

    @property
    def frozen(self) -> Path | None:
        name = self.meta.get("frozen")
        return self.path.parent / name if name else None


def _where(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def is_old_format(path: Path) -> bool:
    """A checkpoint of mimo-toolkit's first format (``model/<module>/tpXX-ppYY.pt`` per shard)."""
    return (path / "model").is_dir() and not (path / DCP_INDEX).exists()


def read_checkpoint(path: Path) -> CheckpointInfo:
    """The checkpoint at ``path``; UserError if it is not a complete one of this format."""
    if is_old_format(path):
        raise UserError(
            f"{_where(path)} is in the checkpoint format of mimo-toolkit before torch.distributed.checkpoint "
            "(tpXX-ppYY.pt files), which this version does not read: start a new run directory, or resume "
            "it with the mimo-toolkit version that wrote it"
        )
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise UserError(f"{_where(path)} is incomplete (no {META}): delete it, or point "
                        f"{path.parent.name}/{LATEST} at a complete checkpoint") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{_where(path)}/{META} is not JSON ({exc.msg}): restore it or delete the checkpoint") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{_where(path)}/{META}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return CheckpointInfo(path, meta)


def latest(run_dir: RunDir) -> CheckpointInfo | None:
    """The newest complete checkpoint of ``run_dir``, or None when it has none yet."""
    root = run_dir.checkpoint_dir
    pointer = root / LATEST
    if not pointer.exists():
        old = sorted(p for p in root.glob("step-*") if is_old_format(p)) if root.is_dir() else []
        if old:
            read_checkpoint(old[-1])  # refuses, saying what to do
        return None
    name = pointer.read_text().strip()
    if not name or not (root / name).is_dir():
        raise UserError(f"{_where(pointer)} names {name!r}, which does not exist: point it at a complete "
                        "checkpoint directory or delete it to start over")
    return read_checkpoint(root / name)


def verify_files(info: CheckpointInfo) -> None:
    """Every data file the checkpoint (and its frozen store) lists exists with its size."""
    for path in [info.path, info.frozen] if info.frozen else [info.path]:
        try:
            files = json.loads((path / META).read_text())["files"]
        except FileNotFoundError:
            raise UserError(f"{_where(path)}: missing (the checkpoint {info.path.name} refers to it)") from None
        for name, size in sorted(files.items()):
            f = path / name
            if not f.exists():
                raise UserError(f"{_where(path)}/{name}: missing; restore it, or delete {_where(info.path)} and "
                                f"point {LATEST} at an older checkpoint")
            if f.stat().st_size != size:
                raise UserError(f"{_where(path)}/{name}: {f.stat().st_size} bytes, the checkpoint wrote {size} "
                                f"(truncated or overwritten); restore it, or delete {_where(info.path)} and point "
                                f"{LATEST} at an older checkpoint")


# ---- the resume guard ---------------------------------------------------------------------------


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty dict is the same as an absent one
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


@dataclass
class ConfigChanges:
    """Keys that differ between the config of a checkpoint and a new one, by what they mean."""

    resumable: list[str]
    incompatible: list[str]
    other: list[str]


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def classify_changes(old: dict, new: dict) -> ConfigChanges:
    """Compare two ``JobConfig.to_dict()`` trees."""
    a, b = flatten(old), flatten(new)
    changes = ConfigChanges([], [], [])
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") == b.get(key, "<unset>"):
            continue
        shown = f"{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}"
        if _matches(key, INCOMPATIBLE):
            changes.incompatible.append(shown)
        elif _matches(key, RESUMABLE):
            changes.resumable.append(shown)
        else:
            changes.other.append(shown)
    return changes


def _listed(items: list[str], limit: int = 4) -> str:
    return "; ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def check_resume(checkpoint_config: dict, new_config: dict, where: str, force: bool = False) -> ConfigChanges:
    """Raise UserError when ``new_config`` cannot (or, without ``force``, should not) resume a
    checkpoint written by ``checkpoint_config``; returns the changes otherwise."""
    changes = classify_changes(checkpoint_config, new_config)
    if changes.incompatible:
        raise UserError(f"{where} was written by another model ({_listed(changes.incompatible)}); "
                        "use a new run directory")
    if changes.other and not force:
        raise UserError(f"{where} would resume with changed settings ({_listed(changes.other)}); "
                        "use a new run directory, or --force to resume with them")
    return changes


def check_run_dir(run_dir: RunDir, new_config: dict, force: bool = False) -> None:
    """The submit-time guard: may a job of ``new_config`` run in ``run_dir``?

    With a checkpoint, its config is the reference (the job will resume it); otherwise the
    run directory's ``job.json``. A fresh directory accepts anything.
    """
    info = latest(run_dir)
    if info is not None and info.config is not None:
        check_resume(info.config, new_config, f"{run_dir.path.name}/{_where(info.path)}", force)
        return
    if run_dir.job_file.exists():
        try:
            old = json.loads(run_dir.job_file.read_text())["job"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        check_resume(old, new_config, f"{run_dir.path.name}/job.json", force)
