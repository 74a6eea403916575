"""A vision encoder and a Whisper-base-class audio encoder feeding one LLM.

Modules: ``vision`` (CLIP ViT-L/14-336 + MLP projector), ``audio`` (Whisper-base encoder:
a stride-2 convolution stem over 80 log-mel bins, 6 layers, 512 hidden; + MLP projector)
and ``llm`` (Vicuna-7B-class with a 4096-token context, since 576 image and 1500 audio
placeholders already take 2076 positions). Default freezing: encoders and LLM frozen,
both projectors trained (stage-1 alignment).
"""

from mimo_toolkit.config import AudioEncoder, JobConfig, TrainConfig
from mimo_toolkit.layout import MimoParallelismConfig, ModuleParallelismConfig
from mimo_toolkit.recipe import Recipe
from mimo_toolkit.recipes.llava import (
    IMAGE_TOKEN_ID,
    clip_vit_l14_336,
    cpu_cluster,
    gpu_cluster,
    stage1_train,
    tiny_llm,
    tiny_vision,
    vicuna_7b,
)

recipe = Recipe("multi_encoder", "CLIP ViT-L/14-336 + Whisper-base encoder + Vicuna-7B-class LLM")

AUDIO_TOKEN_ID = -300


def whisper_base_encoder() -> AudioEncoder:
    """Whisper-base encoder: 6 layers, 512 hidden, 8 heads, 80 mels x 3000 frames -> 1500 tokens."""
    return AudioEncoder(
        num_layers=6,
        hidden_size=512,
        num_attention_heads=8,
        ffn_hidden_size=2048,
        activation="gelu",
        normalization="LayerNorm",
        num_mel_bins=80,
        num_frames=3000,
        projector="mlp",
    )


def tiny_audio() -> AudioEncoder:
    """A 2-layer audio encoder over 16 mel bins x 32 frames: 16 tokens per clip."""
    return AudioEncoder(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=128,
        num_mel_bins=16,
        num_frames=32,
        projector="mlp",
    )


STAGE1_FREEZE = {"llm": True, "vision": True, "audio": True, "vision_projector": False, "audio_projector": False}


def _job(layout: dict, mode: str, train: TrainConfig, cluster, freeze: dict, tiny: bool) -> JobConfig:
    return JobConfig(
        recipe="multi_encoder",
        preset="",
        model={
            "vision": tiny_vision() if tiny else clip_vit_l14_336(),
            "audio": tiny_audio() if tiny else whisper_base_encoder(),
            "llm": tiny_llm() if tiny else vicuna_7b(max_sequence_length=4096),
        },
        layout=MimoParallelismConfig(
            module_parallelisms=layout,
            language_module="llm",
            deployment_mode=mode,
            special_token_ids={"vision": IMAGE_TOKEN_ID, "audio": AUDIO_TOKEN_ID},
        ),
        freeze=freeze,
        train=train,
        cluster=cluster,
    )


@recipe.preset("tiny")
def tiny() -> JobConfig:
    """2 CPU processes over gloo: LLM TP2, vision DP2, audio DP2 (colocated); everything trains."""
    return _job(
        {
            "vision": ModuleParallelismConfig(),
            "audio": ModuleParallelismConfig(),
            "llm": ModuleParallelismConfig(tp=2),
        },
        "colocated",
        TrainConfig(
            steps=50,
            micro_batch_size=2,
            global_batch_size=8,
            seq_length=80,
            lr=2e-3,
            min_lr=2e-4,
            lr_warmup_steps=5,
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
    """8 GPUs, colocated: LLM TP4 DP2, vision and audio TP1 DP8; stage-1 freezing."""
    train = stage1_train()
    train.seq_length = 4096
    train.micro_batch_size = 8
    return _job(
        {
            "vision": ModuleParallelismConfig(),
            "audio": ModuleParallelismConfig(),
            "llm": ModuleParallelismConfig(tp=4),
        },
        "colocated",
        train,
        gpu_cluster(),
        dict(STAGE1_FREEZE),
        tiny=False,
    )


@recipe.preset("4node")
def four_node() -> JobConfig:
    """32 GPUs, heterogeneous: vision TP2 DP2 on ranks 0-3, audio TP2 DP2 on ranks 4-7,
    LLM TP4 DP6 on ranks 8-31."""
    train = stage1_train()
    train.seq_length = 4096
    train.micro_batch_size = 4
    train.global_batch_size = 288
    train.steps = 1938
    return _job(
        {
            "vision": ModuleParallelismConfig(tp=2, dp=2, rank_offset=0),
            "audio": ModuleParallelismConfig(tp=2, dp=2, rank_offset=4),
            "llm": ModuleParallelismConfig(tp=4, dp=6, rank_offset=8, scalable=True),
        },
        "heterogeneous",
        train,
        gpu_cluster(nodes=4),
        dict(STAGE1_FREEZE),
        tiny=False,
    )
