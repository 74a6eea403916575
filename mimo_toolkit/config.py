"""The job configuration: typed dataclasses that a recipe returns and a job runs.

A recipe preset is a Python function returning a :class:`JobConfig`. The CLI applies
``--set`` overrides and ``--nodes`` scaling to it, validates it, and writes the resolved
config as JSON beside the rendered launch files; the in-job entrypoint reads that file back
with :func:`JobConfig.from_dict`, so a job runs exactly what was rendered.

Everything here is plain Python. Model architectures are described as dataclasses; the
runtime (``mimo_toolkit.runtime.model.specs``) turns them into megatron-core configs and
ModuleSpecs. Field docstrings are the user-facing documentation of each ``--set`` key.
The rules a config must satisfy live in ``mimo_toolkit.validation`` (one place, used by every
command, the planner and the job).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from .layout import MimoParallelismConfig
from .typed import from_plain, to_plain

# --------------------------------------------------------------------------------------
# Model architectures (one flat dataclass per module kind, so `--set model.<module>.<field>`
# addresses every knob).
# --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TransformerArch:
    """Fields every transformer stack has (LLM decoder or encoder trunk)."""

    num_layers: int
    """Number of transformer layers; the module's pipeline size must divide it."""
    hidden_size: int
    """Hidden size of the residual stream."""
    num_attention_heads: int
    """Attention heads; the module's tensor-parallel size must divide it."""
    num_query_groups: int | None = None
    """Grouped-query attention groups (None: one per head)."""
    ffn_hidden_size: int | None = None
    """MLP inner size (None: 4 x hidden_size)."""
    normalization: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    """Normalization layer."""
    activation: Literal["gelu", "quick_gelu", "swiglu"] = "gelu"
    """MLP activation."""
    add_bias_linear: bool = True
    """Biases in linear layers."""
    layernorm_epsilon: float = 1e-5
    """Epsilon of the normalization layers."""
    init_method_std: float = 0.02
    """Standard deviation of the weight initialisation."""
    pretrained: str | None = None
    """A local Hugging Face checkpoint directory to start from (config.json + safetensors;
    docs/weights.md). Fields left at their defaults are filled from its config.json; a field
    set to another value is refused."""

    @property
    def built_layers(self) -> int:
        """Transformer layers the module builds (all of them, except for vision features
        taken from an earlier layer)."""
        return self.num_layers

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads


@dataclass(kw_only=True)
class LanguageModel(TransformerArch):
    """A GPT-style decoder (megatron-core GPTModel)."""

    KIND: ClassVar[str] = "llm"
    vocab_size: int
    """Vocabulary size before padding (padded to a multiple of 128 x TP at build time)."""
    max_sequence_length: int
    """Longest sequence the position embedding supports."""
    position_embedding: Literal["rope", "learned_absolute"] = "rope"
    """Position embedding type."""
    rotary_base: int = 10000
    """RoPE base."""
    tie_embeddings: bool = False
    """Share input embedding and output layer weights."""
    rope_scaling_factor: float | None = None
    """Llama-3.x RoPE frequency scaling factor (8 for 3.1, 32 for 3.2); None: no scaling.
    megatron-core fixes the other parameters (low/high frequency factors 1 and 4, original
    context 8192)."""

    @property
    def tokens_per_sample(self) -> int:
        return 0


@dataclass(kw_only=True)
class ProjectorFields:
    """The projection from an encoder's hidden size to the LLM's (MultimodalProjector)."""

    projector: Literal["mlp", "affine"] = "mlp"
    """Projector type: 2-layer MLP with GELU (LLaVA-1.5) or a single linear map."""
    projector_ffn_hidden_size: int | None = None
    """Inner size of the MLP projector (None: the LLM's hidden size)."""
    projector_activation: Literal["gelu", "gelu_tanh", "quick_gelu", "silu", "relu"] = "gelu"
    """Activation between the MLP projector's layers (gelu is the exact, erf-based one)."""


@dataclass(kw_only=True)
class VisionEncoder(ProjectorFields, TransformerArch):
    """A CLIP-style ViT (megatron-core CLIPViTModel) and its projector."""

    KIND: ClassVar[str] = "vision"
    image_size: int = 336
    """Square input image side in pixels."""
    patch_size: int = 14
    """Patch side in pixels; image_size must be a multiple of it."""
    num_channels: int = 3
    """Input channels."""
    class_token: bool = True
    """The ViT prepends a class token (CLIP does)."""
    keep_class_token: bool = False
    """Feed the class token's output to the LLM too (LLaVA does not)."""
    feature_layer: int = -1
    """Which layer's output the LLM receives, counted like Hugging Face's
    vision_feature_layer: -1 the last, -2 the penultimate (LLaVA-1.5), k > 0 the k-th.
    Only the layers up to it are built."""

    @property
    def built_layers(self) -> int:
        layer = self.feature_layer
        return layer if layer > 0 else self.num_layers + 1 + layer

    @property
    def tokens_per_sample(self) -> int:
        """Embeddings the LLM receives per image."""
        patches = (self.image_size // self.patch_size) ** 2
        return patches + (1 if self.class_token and self.keep_class_token else 0)


@dataclass(kw_only=True)
class AudioEncoder(ProjectorFields, TransformerArch):
    """A Whisper-style audio encoder: a convolution stem over log-mel features, then a
    transformer block, and its projector."""

    KIND: ClassVar[str] = "audio"
    num_mel_bins: int = 80
    """Log-mel channels of the input features."""
    num_frames: int = 3000
    """Input frames (10 ms hop: 3000 = 30 s); the stem halves them."""
    sample_rate: int = 16000
    """Waveform sample rate the features are computed at."""

    @property
    def tokens_per_sample(self) -> int:
        """Embeddings the LLM receives per audio clip (the stride-2 stem halves the frames)."""
        return (self.num_frames + 1) // 2


ModuleArch = Union[LanguageModel, VisionEncoder, AudioEncoder]

# --------------------------------------------------------------------------------------
# Training, data and cluster settings
# --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping of a run."""

    steps: int = 1000
    """Optimizer steps to train (0: build the model, e.g. import pretrained weights, and
    write the step-0 checkpoint)."""
    micro_batch_size: int = 1
    """Samples per micro-batch per data-parallel replica of the language model."""
    global_batch_size: int = 32
    """Samples per optimizer step (micro-batches are accumulated to it)."""
    seq_length: int = 2048
    """Tokens per sample fed to the LLM, placeholders for encoder outputs included."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    lr_warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up."""
    lr_decay_steps: int | None = None
    """Step at which the decay reaches min_lr (None: train.steps). Set it to stop early or train
    longer without changing the schedule of a run being resumed."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay, in [0, 1)."""
    adam_beta2: float = 0.95
    """AdamW's second-moment decay, in [0, 1)."""
    adam_eps: float = 1e-8
    """AdamW's epsilon (> 0)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm (over all modules) to this; 0 disables."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """Compute precision: bf16 (fp32 master weights in the optimizer) or fp32."""
    seed: int = 1234
    """Seed of weights, data order and dropout."""
    save_interval: int = 500
    """Save a checkpoint every N steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = 3
    """Keep the newest N checkpoints (0: keep all)."""
    log_interval: int = 1
    """Print a progress line every N steps (metrics.jsonl gets every step)."""
    eval_interval: int = 0
    """Evaluate on the validation split every N steps; 0: never during training."""
    timeout_s: int = 600
    """Seconds a collective may wait before it ends the job (every process group's timeout).
    Generous: a checkpoint barrier waits for synchronous saves and start-up for every rank's
    data checks. A dead or failing rank still ends the job within seconds (failure board)."""
    loggers: list[str] | None = None
    """Experiment trackers besides metrics.jsonl: any of tensorboard, wandb, mlflow (comma
    separated; [] for none). None: tensorboard when it is installed where the job runs."""
    wandb_project: str = "mimo-toolkit"
    """W&B project (offline unless WANDB_MODE says otherwise or WANDB_API_KEY is set)."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI (None: a file store in RUN_DIR/mlruns)."""
    mlflow_experiment: str | None = None
    """MLflow experiment (None: the recipe's name)."""
    distributed_optimizer: bool | None = None
    """Shard fp32 master weights and Adam states over each module's data-parallel (x context-
    parallel) group: gradients reduce-scattered, parameters all-gathered after the step, the
    same numbers as without. None: on with GPUs, off on CPU."""
    recompute: dict[str, Literal["none", "selective", "full"]] = field(default_factory=dict)
    """Activation recompute per module (`--set train.recompute.llm=full`): none; selective
    (attention's softmax part recomputed); full (each layer's input kept, the layer rerun in the
    backward). Same numbers, less activation memory, ~1/3 more compute for full."""
    async_save: bool = True
    """Write checkpoints in the background: training stops only to copy its state to host
    memory."""

    def uses_distributed_optimizer(self, gpus: bool) -> bool:
        return self.distributed_optimizer if self.distributed_optimizer is not None else gpus


@dataclass(kw_only=True)
class DataConfig:
    """Where samples come from."""

    source: Literal["synthetic", "llava"] = "synthetic"
    """synthetic: deterministic random tensors; llava: LLaVA-style JSON/JSONL."""
    path: str | None = None
    """Training JSON/JSONL file (source=llava)."""
    valid_path: str | None = None
    """Validation JSON/JSONL file (source=llava)."""
    media_root: str | None = None
    """Directory image/audio paths are relative to (default: the JSON file's directory)."""
    tokenizer: str = "byte"
    """'byte' (built in) or a path to a Hugging Face tokenizer.json."""
    num_samples: int = 4096
    """Samples in the synthetic dataset."""
    on_bad_sample: Literal["skip", "stop"] = "skip"
    """A sample that cannot be loaded is skipped and counted, or stops the run."""
    num_workers: int = 2
    """Worker processes per rank that read, decode and collate whole steps ahead of
    training (0: in the training process)."""
    prefetch: int = 2
    """Steps each data worker prepares ahead."""


@dataclass(kw_only=True)
class SlurmGroup:
    """The Slurm resources of one module's nodes in a heterogeneous job (``cluster.hetjob``):
    unset fields fall back to the cluster-wide value."""

    partition: str | None = None
    """Partition of this module's nodes (e.g. an older GPU type for an encoder)."""
    gpus_per_node: int | None = None
    """GPUs per node requested for this module's nodes."""
    constraint: str | None = None
    """Slurm --constraint (node features) of this module's nodes."""


@dataclass(kw_only=True)
class ClusterConfig:
    """Where and how the job is launched. Presets keep a cluster's settings here."""

    nodes: int | None = None
    """Nodes of the job; the world size is nodes x procs_per_node (`--nodes` sets it and
    rescales the layout). None: as many as the layout needs (heterogeneous)."""
    procs_per_node: int = 8
    """Processes (ranks) per node."""
    gpus_per_node: int = 8
    """GPUs per node requested from Slurm (0: a CPU job, gloo backend)."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    """Wall-clock limit (Slurm --time): MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED."""
    cpus_per_task: int | None = None
    """CPUs for the one task per node, which runs all of the node's ranks (passed to sbatch
    and srun). None: all of the node's CPUs when exclusive, else Slurm's default of one: a
    GPU job needs one or the other."""
    mem: str | None = None
    """Memory per node (Slurm --mem: a number, megabytes unless K/M/G/T follows; '0' is all of it)."""
    exclusive: bool = False
    """Whole nodes (Slurm --exclusive): every CPU and GPU of each node."""
    constraint: str | None = None
    """Node features (Slurm --constraint)."""
    dependency: str | None = None
    """Slurm --dependency, e.g. afterok:1234 (TYPE:JOBID[:JOBID...] joined by ',' or '?', or singleton)."""
    reservation: str | None = None
    signal: str = "USR2@300"
    """Preemption warning: SIGNAL@SECONDS before the time limit (never USR1: NCCL uses it)."""
    max_restarts: int = 3
    """Requeue the job at most this many times after preemption."""
    container_image: str | None = None
    """pyxis/enroot image; enables --container-* flags on srun."""
    container_mounts: list[str] = field(default_factory=list)
    """pyxis mounts, each SRC:DST[:FLAGS] (the run directory and a venv must be mounted)."""
    container_workdir: str | None = None
    python: str = "python3"
    """Interpreter on the compute nodes."""
    venv: str | None = None
    """A virtual environment the batch script activates on the host; with a container it
    reaches the ranks only through PATH, so it must be mounted at the same path (a venv
    inside the image: leave this unset and point `python` at its interpreter)."""
    env_modules: list[str] = field(default_factory=list)
    """Environment modules to 'module load' before launching."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables every rank gets (e.g. NCCL settings)."""
    torchx_scheduler: str = "slurm"
    """TorchX scheduler used by `submit --scheduler torchx` (slurm, local_cwd, kubernetes, ...)."""
    sbatch_extra: list[str] = field(default_factory=list)
    """Extra sbatch flags, each one `--flag` or `--flag=value` (e.g. --gres=gpu:8, --mail-type=END)."""
    srun_extra: list[str] = field(default_factory=list)
    """Extra srun flags of the training step, each one `--flag` or `--flag=value` (e.g. --mpi=pmix)."""
    after: str | None = None
    """Start after another job: JOBID[:afterok|afterany|afternotok] (default afterok)."""
    allow_partial_nodes: bool = False
    """Allow a world size that does not fill whole nodes: the last node runs fewer processes."""
    hetjob: bool = False
    """Submit a heterogeneous layout as a Slurm heterogeneous job: one component per module,
    each with its own partition / GPUs / constraint (`cluster.groups.<module>.*`)."""
    groups: dict[str, SlurmGroup] = field(default_factory=dict)
    """Per-module Slurm resources of a heterogeneous job, by module name."""
    image: str | None = None
    """Container image of TorchX's container schedulers (kubernetes, docker), with
    mimo-toolkit, torch and megatron-core installed."""
    kubernetes_queue: str = "default"
    """Volcano queue of TorchX's kubernetes scheduler."""
    kubernetes_namespace: str = "default"
    """Kubernetes namespace of TorchX's kubernetes scheduler."""
    torchx_mounts: list[str] = field(default_factory=list)
    """Mounts of TorchX's container schedulers, each type=volume|bind,src=...,dst=...[,readonly]
    (the run directory must be on one that every pod shares)."""
    snapshot: bool = False
    """Copy the toolkit package and the recipe file into RUN_DIR/snapshot at submit time; every
    attempt of the job (requeues too) runs that copy (first on PYTHONPATH)."""


# --------------------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class JobConfig:
    """Everything a run needs: model, layout, freezing, training, data, cluster."""

    recipe: str
    """Recipe name (informational)."""
    preset: str
    """Preset name (informational)."""
    model: dict[str, ModuleArch]
    """Architecture of each module, by module name."""
    layout: MimoParallelismConfig
    """Parallel layout of each module and the deployment mode."""
    freeze: dict[str, bool] = field(default_factory=dict)
    """Frozen parts: a module name (encoder or LLM) or '<encoder>_projector'."""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    job_name: str = ""
    """Job name (Slurm --job-name); defaults to '<recipe>-<preset>'."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables added with --env."""
    overrides: list[str] = field(default_factory=list)
    """The --set overrides applied, in order (provenance)."""

    # ---- derived views ---------------------------------------------------------------
    @property
    def language_model(self) -> LanguageModel:
        arch = self.model[self.layout.language_module]
        assert isinstance(arch, LanguageModel)
        return arch

    @property
    def encoders(self) -> dict[str, VisionEncoder | AudioEncoder]:
        """Encoder modules in declaration order."""
        return {n: a for n, a in self.model.items() if not isinstance(a, LanguageModel)}

    def freeze_keys(self) -> list[str]:
        """Every valid key of ``freeze``."""
        keys = list(self.model)
        keys += [f"{name}_projector" for name in self.encoders]
        return keys

    def is_frozen(self, part: str) -> bool:
        return bool(self.freeze.get(part, False))

    # ---- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobConfig":
        return from_plain(cls, data, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def config_hash(self) -> str:
        """A short content hash of the resolved config (provenance; not a security hash)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def copy(self) -> "JobConfig":
        return JobConfig.from_dict(self.to_dict())

#: Experiment tracker (``train.loggers``) -> the Python package it needs; each is an extra of
#: the same name (``pip install 'mimo-toolkit[wandb]'``).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for recipe authors."""
    return dataclasses.replace(obj, **changes)
