"""A Whisper-style audio encoder on megatron-core (0.16.1 has no audio encoder model).

Log-mel features ``[batch, mels, frames]`` go through Whisper's stem (a width-3 convolution,
GELU, a width-3 stride-2 convolution, GELU), get fixed sinusoidal positions (a buffer, which
a Whisper checkpoint's ``embed_positions`` replaces), and run through
a megatron-core TransformerBlock (bidirectional, tensor parallel over the module's own TP
group) with a final layer norm. Output: ``[batch, frames // 2, hidden]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional embedding."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class WhisperStyleEncoder(MegatronModule):
    """Convolution stem + transformer block over log-mel features."""

    def __init__(
        self,
        transformer_config: TransformerConfig,
        transformer_layer_spec: ModuleSpec,
        num_mel_bins: int,
        num_frames: int,
        pg_collection=None,
    ) -> None:
        super().__init__(config=transformer_config)
        hidden = transformer_config.hidden_size
        self.num_mel_bins = num_mel_bins
        self.conv1 = torch.nn.Conv1d(num_mel_bins, hidden, kernel_size=3, padding=1)
        self.conv2 = torch.nn.Conv1d(hidden, hidden, kernel_size=3, stride=2, padding=1)
        self.seq_length = (num_frames + 1) // 2
        # Fixed, not trained; persistent so that imported Whisper positions (bit for bit the
        # checkpoint's) are saved and exported as they came in.
        self.register_buffer("positions", sinusoids(self.seq_length, hidden))
        self.decoder = TransformerBlock(
            config=transformer_config,
            spec=transformer_layer_spec,
            pre_process=True,
            post_process=True,
            pg_collection=pg_collection,
        )

    def set_input_tensor(self, input_tensor: torch.Tensor) -> None:
        self.decoder.set_input_tensor(input_tensor)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """``input_features``: [batch, mels, frames] -> [batch, tokens, hidden]."""
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x))  # [b, h, tokens]
        x = x.permute(0, 2, 1) + self.positions[: x.shape[-1]].to(x.dtype)
        x = x.permute(1, 0, 2).contiguous()  # [tokens, b, h]
        x = self.decoder(x, attention_mask=None)
        return x.permute(1, 0, 2).contiguous()
