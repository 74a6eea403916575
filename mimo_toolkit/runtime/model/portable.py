"""What megatron-core 0.16.1 needs to run on CPU over gloo, owned here.

Three places in 0.16.1 assume CUDA:

* ``DotProductAttention`` allocates from a global CUDA memory buffer: replaced by
  :class:`PortableAttention`, a drop-in ``core_attention`` that calls
  ``torch.nn.functional.scaled_dot_product_attention`` (also fine on GPU without
  transformer-engine).
* ``RotaryEmbedding`` keeps ``inv_freq`` as a plain attribute (not a buffer), so
  ``model.to(device)`` leaves it behind, and ``get_emb`` moves it to
  ``torch.cuda.current_device()`` on the first forward: :class:`PortableRotaryEmbedding`
  moves it with the module (``to``, ``cuda``, ``to_empty``), always in fp32.
* ``CLIPViTModel.__init__`` calls ``.cuda()`` on its position ids: :class:`PortableCLIPViTModel`
  builds it with ``Tensor.cuda`` made a no-op when CUDA is absent, and keeps the position ids
  as a buffer so ``.to(device)`` moves them. It also drops the class token when the LLM
  should not see it (LLaVA feeds patch tokens only).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.vision.clip_vit_model import CLIPViTModel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class PortableAttention(MegatronModule):
    """``core_attention`` on ``scaled_dot_product_attention`` (no CUDA buffers, no TE)."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("context parallelism needs transformer-engine attention")
        tp = pg_collection.tp.size() if pg_collection is not None else 1
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("PortableAttention supports neither packed sequences nor attention bias")
        # [s, b, heads, d] -> [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if self.heads != self.groups:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type == AttnMaskType.causal
        mask = None
        if attention_mask is not None and not causal:
            mask = ~attention_mask  # megatron masks are True where attention is NOT allowed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale)
        seq, batch = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)


class PortableRotaryEmbedding(RotaryEmbedding):
    """RoPE whose frequency table follows the module to its device and stays fp32.

    ``inv_freq`` is not made a buffer: ``model.to(torch.bfloat16)`` would round the
    frequencies (megatron-core computes them in fp32), and checkpoints would gain a key.
    Instead every ``Module._apply`` (what ``to``/``cuda``/``to_empty`` run) moves it to the
    device that ``fn`` maps a float32 tensor to, without changing its dtype."""

    def _apply(self, fn, recurse: bool = True):
        target = fn(torch.empty(0, dtype=torch.float32, device=self.inv_freq.device)).device
        if target != self.inv_freq.device:
            self.inv_freq = self._fp32_table(target)
            RotaryEmbedding.forward.cache_clear()  # its lru_cache holds tables on the old device
        return super()._apply(fn, recurse)

    def _fp32_table(self, device: torch.device) -> torch.Tensor:
        if self.inv_freq.device.type == "meta":  # no values to move: rebuild from the exact copy
            return torch.tensor(self.inv_freq_values, dtype=torch.float32, device=device)
        return self.inv_freq.to(device=device, dtype=torch.float32)

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if not self.rotary_interleaved:
            emb = torch.cat((freqs, freqs), dim=-1)
        else:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        return emb[:, None, None, :]


def make_rotary_portable(model: torch.nn.Module) -> None:
    """Swap every RotaryEmbedding inside ``model`` for the portable variant (same state).

    The table's values are also kept as Python floats (exact for fp32, and on no device), so
    that a model moved to the meta device (which keeps no values) can be materialised again
    with ``to_empty``."""
    for module in model.modules():
        if type(module) is RotaryEmbedding:
            module.__class__ = PortableRotaryEmbedding
            module.inv_freq_values = tuple(module.inv_freq.float().tolist())


def stray_tensors(model: torch.nn.Module, device_type: str) -> list[str]:
    """Tensors a module holds as plain attributes (neither parameters nor buffers, so
    ``model.to`` skips them) that are not on ``device_type``: what broke RoPE on GPUs."""
    return [f"{name}.{attr}" for name, module in model.named_modules() for attr, value in vars(module).items()
            if isinstance(value, torch.Tensor) and value.device.type != device_type]


@contextlib.contextmanager
def _cuda_calls_are_noops():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


class PortableCLIPViTModel(CLIPViTModel):
    """megatron-core's CLIP ViT, constructible without CUDA, optionally without class token output."""

    def __init__(self, *args, keep_class_token: bool = True, **kwargs) -> None:
        guard = contextlib.nullcontext() if torch.cuda.is_available() else _cuda_calls_are_noops()
        with guard:
            super().__init__(*args, **kwargs)
        position_ids = self.position_ids
        del self.position_ids
        self.register_buffer("position_ids", position_ids.cpu(), persistent=False)
        self.drop_class_tokens = self.class_token_len if (self.add_class_token and not keep_class_token) else 0

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x, attention_mask)  # [b, s, h]
        return out[:, self.drop_class_tokens :] if self.drop_class_tokens else out
