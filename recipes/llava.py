"""LLaVA-1.5: a CLIP ViT-L/14-336 vision encoder, a 2-layer MLP projector and a Vicuna-7B LLM.

Modules: ``vision`` (encoder + projector) and ``llm``. The default freezing is LLaVA's
stage 1 (feature alignment): LLM and vision encoder frozen, projector trained. The tiny
preset trains everything, because its weights start random. ``stage1`` and ``stage2`` start
from Hugging Face checkpoints in ``$MIMO_TOOLKIT_WEIGHTS`` (docs/weights.md).
"""

import os

from mimo_toolkit.config import (
    ClusterConfig,
    DataConfig,
    JobConfig,
    LanguageModel,
    TrainConfig,
    VisionEncoder,
    replace,
)
from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.recipe import Recipe

recipe = Recipe("llava", "LLaVA-1.5: CLIP ViT-L/14-336 + MLP projector + Vicuna-7B")

#: Placeholder ids in the LLM's input (LLaVA's IMAGE_TOKEN_INDEX); never embedded.
IMAGE_TOKEN_ID = -200


# ---- architectures (reused by other recipes) -----------------------------------------


def clip_vit_l14_336() -> VisionEncoder:
    """CLIP ViT-L/14 at 336 px: 24 layers, 1024 hidden, 16 heads, 576 patch tokens; LLaVA-1.5
    takes the penultimate layer's features (23 layers run)."""
    return VisionEncoder(
        num_layers=24,
        feature_layer=-2,
        hidden_size=1024,
        num_attention_heads=16,
        ffn_hidden_size=4096,
        activation="quick_gelu",
        normalization="LayerNorm",
        image_size=336,
        patch_size=14,
        projector="mlp",
    )


def vicuna_7b(max_sequence_length: int = 2048) -> LanguageModel:
    """Vicuna-7B (LLaMA-2 architecture): 32 layers, 4096 hidden, 32 heads, SwiGLU, RMSNorm."""
    return LanguageModel(
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        ffn_hidden_size=11008,
        normalization="RMSNorm",
        activation="swiglu",
        add_bias_linear=False,
        layernorm_epsilon=1e-5,
        vocab_size=32000,
        max_sequence_length=max_sequence_length,
        position_embedding="rope",
    )


def tiny_vision() -> VisionEncoder:
    """A 2-layer ViT on 32 px images with 8 px patches: 16 tokens per image."""
    return VisionEncoder(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=128,
        activation="quick_gelu",
        image_size=32,
        patch_size=8,
        projector="mlp",
    )


def tiny_llm(max_sequence_length: int = 128) -> LanguageModel:
    """A 2-layer LLaMA-style decoder with a byte-level vocabulary."""
    return LanguageModel(
        num_layers=2,
        hidden_size=128,
        num_attention_heads=4,
        ffn_hidden_size=256,
        normalization="RMSNorm",
        activation="swiglu",
        add_bias_linear=False,
        vocab_size=320,
        max_sequence_length=max_sequence_length,
    )


def cpu_cluster(procs_per_node: int = 2) -> ClusterConfig:
    """This machine or CPU Slurm nodes: gloo, no GPUs."""
    return ClusterConfig(nodes=1, procs_per_node=procs_per_node, gpus_per_node=0, time="00:30:00", signal="USR2@60")


def gpu_cluster(nodes: int = 1) -> ClusterConfig:
    """A generic 8-GPU-per-node Slurm cluster; copy a preset to fill partition and account.

    Whole nodes (every CPU goes to the node's torchrun task, all memory), one process per GPU.
    NCCL: one CUDA connection per device (megatron-core's compute/communication overlap
    needs it), failed collectives abort the process instead of hanging (the failure board
    then names the rank), and NCCL's own warnings in the rank logs."""
    return ClusterConfig(
        nodes=nodes,
        procs_per_node=8,
        gpus_per_node=8,
        exclusive=True,
        mem="0",
        time="04:00:00",
        env={"CUDA_DEVICE_MAX_CONNECTIONS": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "NCCL_DEBUG": "WARN"},
    )


def stage1_train() -> TrainConfig:
    """LLaVA-1.5 pretraining (feature alignment): lr 1e-3, cosine, 3% warm-up, one epoch of 558K."""
    return TrainConfig(
        steps=2180,
        micro_batch_size=16,
        global_batch_size=256,
        seq_length=2048,
        lr=1e-3,
        lr_warmup_steps=65,
        lr_schedule="cosine",
        weight_decay=0.0,
        precision="bf16",
        save_interval=500,
    )


def stage2_train() -> TrainConfig:
    """LLaVA-1.5 visual instruction tuning: lr 2e-5, cosine, 3% warm-up, one epoch of 665K at batch 128."""
    return replace(stage1_train(), steps=5198, micro_batch_size=8, global_batch_size=128, lr=2e-5, lr_warmup_steps=156)


def weights(name: str) -> str:
    """A Hugging Face checkpoint directory of the stage presets: ``$MIMO_TOOLKIT_WEIGHTS/<name>``
    (default ``weights/<name>``), one per hub repository (docs/weights.md: how to fetch them)."""
    return os.path.join(os.environ.get("MIMO_TOOLKIT_WEIGHTS", "weights"), name)


def llava_data(*parts: str) -> str:
    """LLaVA's own training data under ``$MIMO_TOOLKIT_DATA`` (default ``data``)."""
    return os.path.join(os.environ.get("MIMO_TOOLKIT_DATA", "data"), *parts)


# ---- presets ----------------------------------------------------------------------------


def _job(layout: dict, mode: str, train: TrainConfig, cluster: ClusterConfig, freeze: dict, tiny: bool) -> JobConfig:
    return JobConfig(
        recipe="llava",
        preset="",
        model={"vision": tiny_vision() if tiny else clip_vit_l14_336(), "llm": tiny_llm() if tiny else vicuna_7b()},
        layout=MimoParallelismConfig(
            module_parallelisms=layout,
            language_module="llm",
            deployment_mode=mode,
            special_token_ids={"vision": IMAGE_TOKEN_ID},
        ),
        freeze=freeze,
        train=train,
        cluster=cluster,
    )


STAGE1_FREEZE = {"llm": True, "vision": True, "vision_projector": False}


@recipe.preset("tiny")
def tiny() -> JobConfig:
    """2 CPU processes over gloo: LLM TP2, vision DP2 (colocated); everything trains."""
    return _job(
        {
            "vision": ModuleParallelismConfig(tp=1),
            "llm": ModuleParallelismConfig(tp=2),
        },
        "colocated",
        TrainConfig(
            steps=50,
            micro_batch_size=2,
            global_batch_size=8,
            seq_length=64,
            lr=2e-3,
            lr_warmup_steps=5,
            min_lr=2e-4,
            precision="fp32",
            save_interval=25,
            adam_beta2=0.99,
        ),
        cpu_cluster(),
        {},
        tiny=True,
    )


@recipe.preset("1node", default=True)
def one_node() -> JobConfig:
    """8 GPUs, colocated: LLM TP4 DP2, vision TP1 DP8; stage-1 freezing."""
    return _job(
        {
            "vision": ModuleParallelismConfig(tp=1),
            "llm": ModuleParallelismConfig(tp=4),
        },
        "colocated",
        stage1_train(),
        gpu_cluster(),
        dict(STAGE1_FREEZE),
        tiny=False,
    )


@recipe.preset("4node")
def four_node() -> JobConfig:
    """32 GPUs, heterogeneous: vision TP4 DP2 on ranks 0-7, LLM TP4 DP6 on ranks 8-31."""
    train = stage1_train()
    train.micro_batch_size = 4
    train.global_batch_size = 288  # 12 micro-batches of 4 x 6 replicas; 256 does not split over dp 6
    train.steps = 1938
    return _job(
        {
            "vision": ModuleParallelismConfig(tp=4, dp=2, rank_offset=0),
            "llm": ModuleParallelismConfig(tp=4, dp=6, rank_offset=8, scalable=True),
        },
        "heterogeneous",
        train,
        gpu_cluster(nodes=4),
        dict(STAGE1_FREEZE),
        tiny=False,
    )


@recipe.preset("stage1")
def stage1() -> JobConfig:
    """8 GPUs, LLaVA-1.5 stage 1 from CLIP ViT-L/14-336 and Vicuna-7B v1.5 checkpoints: projector trains."""
    job = one_node()
    job.model["vision"].pretrained = weights("clip-vit-large-patch14-336")
    job.model["llm"].pretrained = weights("vicuna-7b-v1.5")
    job.data = DataConfig(
        source="llava",
        path=llava_data("LLaVA-Pretrain", "blip_laion_cc_sbu_558k.json"),
        media_root=llava_data("LLaVA-Pretrain", "images"),
        tokenizer=weights("vicuna-7b-v1.5"),
    )
    return job


@recipe.preset("stage2")
def stage2() -> JobConfig:
    """8 GPUs, LLaVA-1.5 stage 2 from the llava-1.5-7b-hf checkpoint: projector and LLM train."""
    job = one_node()
    llava = weights("llava-1.5-7b-hf")
    job.model["vision"].pretrained = llava  # the CLIP tower and the projector
    job.model["llm"].pretrained = llava
    job.model["llm"].vocab_size = 32064  # llava-hf's text vocabulary: + <image>, <pad>, padded to 64
    job.freeze = {"vision": True, "vision_projector": False, "llm": False}
    job.train = stage2_train()
    job.data = DataConfig(
        source="llava",
        path=llava_data("LLaVA-Instruct", "llava_v1_5_mix665k.json"),
        media_root=llava_data("LLaVA-Instruct"),
        tokenizer=llava,
    )
    return job
