"""InternViT-6B feeding a Vicuna-7B LLM: a large encoder where per-module layouts pay.

Modules: ``vision`` (InternViT-6B-448px-V1-5's architecture: 45 layers, 3200 hidden, 25 heads,
12800 MLP, 448 px images in 14 px patches -> 1024 tokens, + MLP projector; 5.5B parameters)
and ``llm`` (Vicuna-7B). Everything trains (a full fine-tuning stage), so the encoder is
about 30% of the step's FLOPs, against ~1% for LLaVA-1.5's CLIP-L.

Why a shared layout does not work here: 25 heads admit no tensor-parallel size but 1 (5 and
25 do not divide a node's 8 GPUs), and 45 and 32 layers share no pipeline size but 1, so the
only homogeneous layout is tp1 pp1: 12.3B trained parameters per GPU, which do not fit an
80 GB GPU. Per-module layouts keep the encoder at tp1 and give the LLM its own tp/pp, either
on every rank (colocated) or on ranks of its own (heterogeneous). See
``mimo-toolkit plan big_encoder --nodes 4``.

Tiles: high-resolution pipelines (InternVL) feed several 448 px tiles per sample and shrink
each tile's 1024 patches to 256 tokens. The config has one image per sample per encoder and
no token downsampling, so the presets keep one tile whose 1024 patches all reach the LLM. A
``num_tiles`` field on VisionEncoder (tokens = tiles x patches, attention within a tile)
would model several tiles without overstating attention as one bigger image would.
"""

from mimo_toolkit.config import JobConfig, TrainConfig, VisionEncoder
from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.recipe import Recipe
from mimo_toolkit.recipes.llava import (
    IMAGE_TOKEN_ID,
    cpu_cluster,
    gpu_cluster,
    tiny_llm,
    tiny_vision,
    vicuna_7b,
)
from mimo_toolkit.recipes.llava import recipe as llava

recipe = Recipe("big_encoder", "InternViT-6B (448 px, 1024 tokens) + Vicuna-7B, everything trained")


# ---- architectures ----------------------------------------------------------------------


def intern_vit_6b() -> VisionEncoder:
    """InternViT-6B-448px-V1-5: 45 layers, 3200 hidden, 25 heads, 12800 MLP, RMSNorm, 448 px / 14 px."""
    return VisionEncoder(
        num_layers=45,
        hidden_size=3200,
        num_attention_heads=25,
        ffn_hidden_size=12800,
        activation="gelu",
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        image_size=448,
        patch_size=14,
        projector="mlp",
    )


def tiny_big_vision() -> VisionEncoder:
    """The tiny ViT at 64 px: 64 tokens per image, as many as the tiny LLM's text."""
    vision = tiny_vision()
    vision.image_size = 64
    return vision


def finetune_train() -> TrainConfig:
    """Full fine-tuning: lr 2e-5, cosine, 3% warm-up, 288 samples of 2048 tokens per step
    (288 = 9 x 32 splits over data-parallel sizes 8, 16, 24, 32 and 48)."""
    return TrainConfig(
        steps=5000,
        micro_batch_size=1,
        global_batch_size=288,
        seq_length=2048,
        lr=2e-5,
        min_lr=0.0,
        lr_warmup_steps=150,
        lr_schedule="cosine",
        weight_decay=0.05,
        precision="bf16",
        save_interval=500,
    )


# ---- presets ----------------------------------------------------------------------------


def _job(layout: dict, mode: str, train: TrainConfig, cluster, tiny: bool) -> JobConfig:
    return JobConfig(
        recipe="big_encoder",
        preset="",
        model={"vision": tiny_big_vision() if tiny else intern_vit_6b(), "llm": tiny_llm() if tiny else vicuna_7b()},
        layout=MimoParallelismConfig(
            module_parallelisms=layout,
            language_module="llm",
            deployment_mode=mode,
            special_token_ids={"vision": IMAGE_TOKEN_ID},
        ),
        freeze={},
        train=train,
        cluster=cluster,
    )


@recipe.preset("tiny")
def tiny() -> JobConfig:
    """2 CPU processes over gloo: LLM TP2, vision DP2 (colocated); everything trains."""
    train = llava.build("tiny").train  # llava's tiny training settings...
    train.seq_length = 128  # ...with room for the 64 image tokens
    return _job(
        {
            "vision": ModuleParallelismConfig(tp=1),
            "llm": ModuleParallelismConfig(tp=2),
        },
        "colocated",
        train,
        cpu_cluster(),
        tiny=True,
    )


@recipe.preset("1node", default=True)
def one_node() -> JobConfig:
    """8 GPUs, colocated: vision TP1 DP8, LLM TP4 DP2, micro-batch 4 (the planner's pick on
    H100: 70 of the 72 usable GiB per GPU)."""
    train = finetune_train()
    train.micro_batch_size = 4
    return _job(
        {
            "vision": ModuleParallelismConfig(tp=1),
            "llm": ModuleParallelismConfig(tp=4),
        },
        "colocated",
        train,
        gpu_cluster(),
        tiny=False,
    )


@recipe.preset("4node")
def four_node() -> JobConfig:
    """32 GPUs, colocated: vision TP1 DP32, LLM TP2 PP2 DP8, micro-batch 4 (the planner's pick;
    on 3 nodes it picks heterogeneous: vision on 8 ranks, LLM PP2 DP8 on 16)."""
    job = one_node()
    job.layout.module_parallelisms["llm"] = ModuleParallelismConfig(tp=2, pp=2)
    job.cluster.nodes = 4
    return job
