"""Every rule a job must satisfy, checked before anything is written, submitted or started.

One torch-free rule set, used by ``show``, ``render``, ``submit`` (``--dry-run`` too) through
:func:`mimo_toolkit.resolve.validate`, and by the planner for every layout it returns. A
job that passes here must run: a rule the runtime would enforce belongs here, not in the job,
where it would fail after the scheduler allocated the nodes.

The checks come in the order a job is resolved:

* :func:`check_config`: the config by itself (modules, freezing, architectures, training,
  cluster and data settings);
* :func:`check_model_fit`: every module's tp/cp/pp/ep against its architecture (before the
  layout is finalized, so it needs no data-parallel size);
* ``MimoParallelismConfig.finalize`` (``mimo_toolkit.layout``): the rank arithmetic;
* :func:`check_batch_fit`: the batch against the finalized data-parallel sizes.

Every failure is a :class:`~mimo_toolkit.errors.UserError` whose one-line message names the
key and the numbers.
"""

from __future__ import annotations

import re

from .config import TRACKER_PACKAGES, JobConfig, LanguageModel, TrainConfig, TransformerArch, VisionEncoder
from .errors import LayoutError, UserError

# ---- the config by itself -----------------------------------------------------------------


def check_config(job: JobConfig) -> None:
    """Checks of the config that need no layout arithmetic."""
    _check_modules(job)
    for name, arch in job.model.items():
        _check_arch(name, arch)
    _check_train(job.train)
    _check_cluster(job)
    _check_sequence(job)
    _check_data(job)


def _check_modules(job: JobConfig) -> None:
    """The model and the layout name the same modules; one language model; freeze keys and
    placeholder ids exist."""
    layout = job.layout
    if set(job.model) != set(layout.module_parallelisms):
        raise UserError(
            f"model modules {sorted(job.model)} and layout modules {sorted(layout.module_parallelisms)} differ"
        )
    lm_name = layout.language_module
    if lm_name not in job.model or not isinstance(job.model[lm_name], LanguageModel):
        raise UserError(f"layout.language_module={lm_name!r} is not a language model in model")
    for name, arch in job.model.items():
        if name != lm_name and isinstance(arch, LanguageModel):
            raise UserError(f"model.{name}: only one language model is supported")
    valid = job.freeze_keys()
    for key in job.freeze:
        if key not in valid:
            raise UserError(f"freeze.{key}: unknown part; valid: {', '.join(valid)}")
    for name in job.encoders:
        if name not in layout.special_token_ids:
            raise UserError(f"layout.special_token_ids has no placeholder id for {name!r}")


def _check_arch(name: str, arch: TransformerArch) -> None:
    for f in ("num_layers", "hidden_size", "num_attention_heads"):
        if getattr(arch, f) < 1:
            raise UserError(f"model.{name}.{f}={getattr(arch, f)} must be >= 1")
    if arch.hidden_size % arch.num_attention_heads:
        raise UserError(
            f"model.{name}.hidden_size={arch.hidden_size} is not divisible by "
            f"model.{name}.num_attention_heads={arch.num_attention_heads}"
        )
    if arch.num_attention_heads % arch.query_groups:
        raise UserError(
            f"model.{name}.num_attention_heads={arch.num_attention_heads} is not divisible by "
            f"model.{name}.num_query_groups={arch.query_groups}"
        )
    if isinstance(arch, VisionEncoder) and min(arch.image_size, arch.patch_size) < 1:
        raise UserError(f"model.{name}: image_size={arch.image_size} and patch_size={arch.patch_size} must be >= 1")
    if isinstance(arch, VisionEncoder) and arch.image_size % arch.patch_size:
        raise UserError(
            f"model.{name}.image_size={arch.image_size} is not a multiple of "
            f"model.{name}.patch_size={arch.patch_size}"
        )


def _check_train(t: TrainConfig) -> None:
    for f in ("steps", "micro_batch_size", "global_batch_size", "seq_length", "log_interval"):
        if getattr(t, f) < 1:
            raise UserError(f"train.{f}={getattr(t, f)} must be >= 1")
    for f in ("save_interval", "eval_interval", "lr_warmup_steps", "keep_checkpoints"):
        if getattr(t, f) < 0:
            raise UserError(f"train.{f}={getattr(t, f)} must be >= 0")
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise UserError(f"train.lr={t.lr} and train.min_lr={t.min_lr} need 0 <= min_lr <= lr, lr > 0")
    if t.timeout_s < 5:
        raise UserError(f"train.timeout_s={t.timeout_s} must be >= 5")
    _check_loggers(t.loggers or [])


def _check_loggers(names: list[str]) -> None:
    """Named trackers must be known and importable (found without importing them)."""
    import importlib.util

    for name in names:
        if name not in TRACKER_PACKAGES:
            raise UserError(f"train.loggers: unknown logger {name!r}; expected any of {', '.join(TRACKER_PACKAGES)}")
    for name in names:
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"train.loggers={name}: the {package!r} package is not installed "
                f"(pip install 'mimo-toolkit[{name}]', where the job runs too)"
            )


_SIGNAL = re.compile(r"(USR2|TERM|INT|HUP)@[0-9]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_name(name: str, where: str) -> None:
    """Environment variable names reach shell scripts unquoted (``export NAME=...``)."""
    if not _ENV_NAME.fullmatch(name):
        raise UserError(f"{where} {name!r}: not a valid environment variable name")


def _check_cluster(job: JobConfig) -> None:
    cluster = job.cluster
    for name in job.env:
        check_env_name(name, "env")
    for name in cluster.env:
        check_env_name(name, "cluster.env")
    sig = cluster.signal
    if sig.upper().startswith(("USR1", "SIGUSR1", "10@")):
        raise UserError(f"cluster.signal={sig}: NCCL uses SIGUSR1; use USR2 or TERM")
    if not _SIGNAL.fullmatch(sig):
        raise UserError(f"cluster.signal={sig!r}: expected SIGNAL@SECONDS, e.g. USR2@300 (USR2, TERM, INT, HUP)")
    if cluster.max_restarts < 0:
        raise UserError(f"cluster.max_restarts={cluster.max_restarts} must be >= 0")
    if cluster.nodes is not None and cluster.nodes < 1:
        raise UserError(f"cluster.nodes={cluster.nodes} must be >= 1")
    if cluster.procs_per_node < 1:
        raise UserError(f"cluster.procs_per_node={cluster.procs_per_node} must be >= 1")
    if cluster.gpus_per_node < 0:
        raise UserError(f"cluster.gpus_per_node={cluster.gpus_per_node} must be >= 0")
    if cluster.gpus_per_node and cluster.procs_per_node > cluster.gpus_per_node:
        raise UserError(
            f"cluster.procs_per_node={cluster.procs_per_node} exceeds "
            f"cluster.gpus_per_node={cluster.gpus_per_node} (one process per GPU)"
        )


def _check_sequence(job: JobConfig) -> None:
    """The sequence fits the position embedding and leaves room for text."""
    lm, seq = job.language_model, job.train.seq_length
    if seq > lm.max_sequence_length:
        raise UserError(
            f"train.seq_length={seq} exceeds "
            f"model.{job.layout.language_module}.max_sequence_length={lm.max_sequence_length}"
        )
    placeholders = sum(a.tokens_per_sample for a in job.encoders.values())
    if placeholders >= seq:
        raise UserError(
            f"train.seq_length={seq} leaves no room for text: the encoders "
            f"put {placeholders} placeholder tokens in every sample"
        )


def _check_data(job: JobConfig) -> None:
    data = job.data
    if data.source == "llava" and not data.path:
        raise UserError("data.source=llava needs data.path (a LLaVA-style JSON or JSONL file)")
    if job.train.eval_interval and data.source == "llava" and not data.valid_path:
        raise UserError(f"train.eval_interval={job.train.eval_interval} needs data.valid_path (or eval_interval=0)")


# ---- the layout against the model and the batch -------------------------------------------


def check_model_fit(job: JobConfig) -> None:
    """TP divides heads (and query groups), PP divides layers, CP splits the sequence and
    EP divides the experts. Needs no resolved DP, so it runs before the layout's ``finalize``."""
    layout, train = job.layout, job.train
    layout.check_sizes()
    for name, m in layout.module_parallelisms.items():
        arch = job.model[name]
        if arch.num_attention_heads % m.tp:
            raise LayoutError(
                f"layout.{name}.tp={m.tp} does not divide model.{name}.num_attention_heads={arch.num_attention_heads}"
            )
        if arch.query_groups % m.tp:
            raise LayoutError(f"layout.{name}.tp={m.tp} does not divide model.{name}.num_query_groups={arch.query_groups}")
        if arch.num_layers % m.pp:
            raise LayoutError(f"layout.{name}.pp={m.pp} does not divide model.{name}.num_layers={arch.num_layers}")
        if m.cp > 1 and name != layout.language_module:
            raise LayoutError(f"layout.{name}.cp={m.cp}: context parallelism applies to the language module only")
        if m.cp > 1 and train.seq_length % (2 * m.cp):
            raise LayoutError(
                f"layout.{name}.cp={m.cp}: train.seq_length={train.seq_length} must be divisible by 2*cp={2 * m.cp}"
            )
        if m.ep > 1:
            experts = getattr(arch, "num_moe_experts", None) or 0
            if not experts or experts % m.ep:
                raise LayoutError(
                    f"layout.{name}.ep={m.ep} needs a mixture-of-experts model whose "
                    f"expert count it divides (model.{name} has {experts} experts)"
                )


def check_batch_fit(job: JobConfig) -> None:
    """After the layout's ``finalize``: the global batch is accumulated from global
    micro-batches of ``mbs x llm.dp`` samples; every module's replicas take equal contiguous
    slices of each global micro-batch."""
    layout, train = job.layout, job.train
    lm_name = layout.language_module
    lm_dp = layout.language.dp
    mbs, gbs = train.micro_batch_size, train.global_batch_size
    per_micro = mbs * lm_dp
    if gbs % per_micro:
        raise LayoutError(
            f"train.global_batch_size={gbs} is not divisible by train.micro_batch_size={mbs} x "
            f"layout.{lm_name}.dp={lm_dp} = {per_micro}"
        )
    for name in layout.encoder_names:
        dp = layout.module_parallelisms[name].dp
        if per_micro % dp:
            raise LayoutError(
                f"layout.{name}.dp={dp} cannot split a micro-batch of train.micro_batch_size={mbs} x "
                f"layout.{lm_name}.dp={lm_dp} = {per_micro} samples evenly; use a micro_batch_size "
                f"divisible by {dp // lm_dp}"
            )
