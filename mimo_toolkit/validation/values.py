"""Single values: the range of every numeric setting and the form of every string a
scheduler reads.

Every ``int``/``float`` field of the config has an entry in :data:`RANGES` (a test holds
every field to it, so a new field needs one), and a float must be finite. Strings that reach
``sbatch``/TorchX are checked for the form those accept, so a job is refused at render time
instead of by the scheduler at submit (or, worse, after the allocation).
"""

from __future__ import annotations

import functools
import math
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from ..config import (
    AudioEncoder,
    ClusterConfig,
    DataConfig,
    JobConfig,
    LanguageModel,
    ProjectorFields,
    TrainConfig,
    TransformerArch,
    VisionEncoder,
)
from ..errors import UserError
from ..typed import field_hints


@dataclass(frozen=True)
class Range:
    """The accepted values of one numeric setting: ``low <= v`` (``low < v`` when
    ``open_low``) and ``v <= high`` (``v < high`` when ``open_high``)."""

    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""
    """Said after the range, e.g. what 0 means."""

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        if self.high is None:
            return above
        return above and (value < self.high if self.open_high else value <= self.high)

    def text(self) -> str:
        low = _num(self.low)
        if self.high is None:
            out = f"> {low}" if self.open_low else f">= {low}"
        else:
            out = f"in {'(' if self.open_low else '['}{low}, {_num(self.high)}{')' if self.open_high else ']'}"
        return f"{out} ({self.note})" if self.note else out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


POSITIVE = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE_REAL = Range(0, open_low=True)
#: [0, 1): Adam's betas.
UNIT = Range(0, 1, open_high=True)

#: The range of every numeric field, by (dataclass, field name); subclasses inherit them.
RANGES: dict[tuple[type, str], Range] = {
    **{(TransformerArch, f): POSITIVE for f in ("num_layers", "hidden_size", "num_attention_heads",
                                                "num_query_groups", "ffn_hidden_size")},
    (TransformerArch, "layernorm_epsilon"): POSITIVE_REAL,
    (TransformerArch, "init_method_std"): POSITIVE_REAL,
    (LanguageModel, "vocab_size"): POSITIVE,
    (LanguageModel, "max_sequence_length"): POSITIVE,
    (LanguageModel, "rotary_base"): POSITIVE,
    (LanguageModel, "rope_scaling_factor"): Range(1, note="Llama-3.x scaling; none disables it"),
    # A Hugging Face vision_feature_layer: -1 the last layer, k > 0 the k-th (checked against num_layers).
    (VisionEncoder, "feature_layer"): Range(-4096, 4096),
    (ProjectorFields, "projector_ffn_hidden_size"): POSITIVE,
    **{(VisionEncoder, f): POSITIVE for f in ("image_size", "patch_size", "num_channels")},
    **{(AudioEncoder, f): POSITIVE for f in ("num_mel_bins", "num_frames", "sample_rate")},
    (TrainConfig, "steps"): Range(0, note="0 builds the model, e.g. imports pretrained weights, and saves step 0"),
    **{(TrainConfig, f): POSITIVE for f in ("micro_batch_size", "global_batch_size", "seq_length", "log_interval")},
    **{(TrainConfig, f): NON_NEGATIVE for f in ("lr_warmup_steps", "weight_decay", "min_lr")},
    (TrainConfig, "lr"): POSITIVE_REAL,
    (TrainConfig, "adam_beta1"): UNIT,
    (TrainConfig, "adam_beta2"): UNIT,
    (TrainConfig, "adam_eps"): POSITIVE_REAL,
    (TrainConfig, "clip_grad"): Range(0, note="0 disables clipping"),
    # Seeds feed torch.Generator.manual_seed(seed * 1_000_003 + index); 32 bits keep that in range.
    (TrainConfig, "seed"): Range(0, 2**32 - 1),
    (TrainConfig, "lr_decay_steps"): POSITIVE,
    (TrainConfig, "save_interval"): Range(0, note="0 saves only at the end"),
    (TrainConfig, "keep_checkpoints"): Range(0, note="0 keeps all"),
    (TrainConfig, "eval_interval"): Range(0, note="0 never evaluates during training"),
    # A collective waiting longer than a day is a hang; timedelta and the stores need a bound.
    (TrainConfig, "timeout_s"): Range(5, 86400),
    (DataConfig, "num_samples"): POSITIVE,
    (DataConfig, "num_workers"): Range(0, note="0 loads in the training process"),
    (DataConfig, "prefetch"): POSITIVE,
    (ClusterConfig, "nodes"): POSITIVE,
    (ClusterConfig, "procs_per_node"): POSITIVE,
    (ClusterConfig, "gpus_per_node"): Range(0, note="0 is a CPU job"),
    (ClusterConfig, "cpus_per_task"): POSITIVE,
    (ClusterConfig, "max_restarts"): NON_NEGATIVE,
}


def range_of(cls: type, name: str) -> Range | None:
    for klass in cls.__mro__:
        if (klass, name) in RANGES:
            return RANGES[(klass, name)]
    return None


@functools.lru_cache(maxsize=None)
def numeric_fields(cls: type) -> tuple[str, ...]:
    """The ``int``/``float`` fields of a config dataclass (optional ones included, bools not)."""
    out = []
    for name, hint in field_hints(cls).items():
        if get_origin(hint) in (Union, types.UnionType):
            hint = next((a for a in get_args(hint) if a is not type(None)), None)
        if hint in (int, float):
            out.append(name)
    return tuple(out)


def sections(job: JobConfig) -> Iterator[tuple[str, Any]]:
    """(key prefix, dataclass) of every part of the config that has numeric fields."""
    for name, arch in job.model.items():
        yield f"model.{name}", arch
    yield "train", job.train
    yield "data", job.data
    yield "cluster", job.cluster


def check_ranges(job: JobConfig) -> None:
    """Every numeric value is finite and in its range."""
    for prefix, obj in sections(job):
        for name in numeric_fields(type(obj)):
            value = getattr(obj, name)
            if value is None:
                continue
            accepted = range_of(type(obj), name)  # None only for a field a test would flag
            if accepted is None:
                if not math.isfinite(value):
                    raise UserError(f"{prefix}.{name}={value} must be a finite number")
            elif not accepted.admits(value):
                what = "" if math.isfinite(value) else "a finite number "
                raise UserError(f"{prefix}.{name}={value} must be {what}{accepted.text()}")


# ---- strings a scheduler reads ---------------------------------------------------------------

#: sbatch --time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or no limit.
SLURM_TIME = re.compile(r"[0-9]+(:[0-9]+){0,2}|[0-9]+-[0-9]+(:[0-9]+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
#: sbatch --mem: a number with an optional unit (megabytes by default).
SLURM_MEM = re.compile(r"[0-9]+[KMGT]?", re.IGNORECASE)
_JOB = r"[0-9]+(_[0-9]+)?(\+[0-9]+)?"
_DEP = rf"(after(any|burstbuffer|corr|notok|ok)?(:{_JOB})+|singleton)"
#: sbatch --dependency: TYPE:JOBID[:JOBID...] items joined by ',' (all) or '?' (any).
SLURM_DEPENDENCY = re.compile(rf"{_DEP}([,?]{_DEP})*")
#: The schedulers TorchX 0.7 registers (tests compare with torchx.schedulers).
TORCHX_SCHEDULERS = ("aws_batch", "aws_sagemaker", "gcp_batch", "kubernetes", "kubernetes_mcad", "local_cwd",
                     "local_docker", "lsf", "ray", "slurm")
#: Slurm caps --signal's lead time at 65535 seconds.
MAX_SIGNAL_LEAD_S = 65535
_SIGNAL = re.compile(r"(USR2|TERM|INT|HUP)@([0-9]+)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[^\s\x00-\x1f\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_env_name(name: str, where: str) -> None:
    """Environment variable names reach shell scripts unquoted (``export NAME=...``)."""
    if not _ENV_NAME.fullmatch(name):
        raise UserError(f"{where} {name!r}: not a valid environment variable name")


def check_scheduler_strings(job: JobConfig) -> None:
    """Job name, time limit, memory, dependency, signal, Slurm names and the TorchX scheduler."""
    cluster = job.cluster
    # A letter or digit: a name of punctuation alone names nothing, and "--" does not survive
    # the TorchX command line (Python 3.11's argparse drops an option value that is exactly "--").
    if not any(ch.isalnum() for ch in job.job_name) or _CONTROL.search(job.job_name):
        raise UserError(f"job_name={job.job_name!r}: must contain a letter or digit, without control characters")
    if not SLURM_TIME.fullmatch(cluster.time):
        raise UserError(
            f"cluster.time={cluster.time!r}: expected a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, "
            "D-HH:MM:SS or UNLIMITED"
        )
    if cluster.mem is not None and not SLURM_MEM.fullmatch(cluster.mem):
        raise UserError(f"cluster.mem={cluster.mem!r}: expected a size such as 0, 64000, 500G or 1T")
    if cluster.dependency is not None and not SLURM_DEPENDENCY.fullmatch(cluster.dependency):
        raise UserError(
            f"cluster.dependency={cluster.dependency!r}: expected TYPE:JOBID[:JOBID...] items joined by ',' or "
            "'?' (TYPE: after, afterany, afterok, afternotok, aftercorr, afterburstbuffer), or singleton"
        )
    for key in ("partition", "account", "qos", "reservation", "constraint"):
        value = getattr(cluster, key)
        if value is not None and not _NAME.fullmatch(value):
            raise UserError(f"cluster.{key}={value!r}: must be non-empty, without spaces or control characters")
    if cluster.torchx_scheduler not in TORCHX_SCHEDULERS:
        raise UserError(
            f"cluster.torchx_scheduler={cluster.torchx_scheduler!r}: expected one of {', '.join(TORCHX_SCHEDULERS)}"
        )
    if not cluster.python.strip():
        raise UserError("cluster.python='': must name the interpreter on the compute nodes")
    _check_signal(cluster.signal)
    for name in job.env:
        check_env_name(name, "env")
    for name in cluster.env:
        check_env_name(name, "cluster.env")


def _check_signal(sig: str) -> None:
    if sig.upper().startswith(("USR1", "SIGUSR1", "10@")):
        raise UserError(f"cluster.signal={sig}: NCCL uses SIGUSR1; use USR2 or TERM")
    match = _SIGNAL.fullmatch(sig)
    if not match:
        raise UserError(f"cluster.signal={sig!r}: expected SIGNAL@SECONDS, e.g. USR2@300 (USR2, TERM, INT, HUP)")
    if int(match.group(2)) > MAX_SIGNAL_LEAD_S:
        raise UserError(f"cluster.signal={sig}: Slurm sends the signal at most {MAX_SIGNAL_LEAD_S} s before the time limit")


def fields_without_range() -> list[str]:
    """Numeric config fields that have no :data:`RANGES` entry (a test keeps this empty)."""
    classes = [LanguageModel, VisionEncoder, AudioEncoder, TrainConfig, DataConfig, ClusterConfig]
    return [f"{c.__name__}.{n}" for c in classes for n in numeric_fields(c) if range_of(c, n) is None]


