"""The planner's activation count against what the runtime's layers really keep.

Oracle: autograd's saved-tensor hooks on the transformer blocks the provider builds (one
process, local layers as on CPU): every tensor saved for the backward that is not a
parameter, counted once per storage. The planner's ``activation_elements_per_token`` must
match it per layer within a few elements per token (the norms' per-token statistics, the
attention's log-sum-exp and the RoPE tables are left out of the formula), and recompute must
keep what the memory model says it keeps.
"""

from __future__ import annotations

import os

import pytest
import torch

from mimo_toolkit.planner.memory import activation_elements_per_token
from mimo_toolkit.planner.workload import module_work
from mimo_toolkit.resolve import resolve_job

SINGLE = ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1", "cluster.procs_per_node=1"]


def saved_elements_per_token(block, x: torch.Tensor, params: set[int], **kwargs) -> float:
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, attention_mask=None, **kwargs)
    return sum(saved.values()) / (x.shape[0] * x.shape[1])


@pytest.mark.parametrize("sets", [
    [],  # RMSNorm, SwiGLU, RoPE (LLM); LayerNorm, quick-GELU (ViT)
    ["model.llm.num_query_groups=2", "model.llm.normalization=LayerNorm", "model.llm.activation=gelu",
     "model.vision.activation=gelu", "model.llm.ffn_hidden_size=384"],
])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_activation_elements_per_layer_match_the_saved_tensors(sets, recompute):
    # The runtime runs eagerly on CPU (train.py sets TORCH_COMPILE_DISABLE before torch is
    # imported); here torch may already be imported by an earlier test, so switch dynamo off
    # directly: megatron-core's compiled bias-activation fusion keeps fewer tensors.
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    with torch._dynamo.config.patch(disable=True):
        _count_and_compare(sets, recompute)


def _count_and_compare(sets: list[str], recompute: str) -> None:
    from mimo_toolkit.runtime.eval.inference import single_process_group
    from mimo_toolkit.runtime.model import recompute as recompute_modes
    from mimo_toolkit.runtime.model.provider import MimoModelProvider

    job = resolve_job("llava", "tiny", sets=[*SINGLE, *sets, "train.precision=fp32",
                                            f"train.recompute.llm={recompute}",
                                            f"train.recompute.vision={recompute}"]).config
    work = {w.name: w for w in module_work(job)}
    with single_process_group():
        provider = MimoModelProvider.from_job(job)
        recompute_modes.apply(provider, job.train.recompute)
        provider.finalize()
        model = provider.provide()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        lm = model.language_model
        seq, batch = 64, 16
        blocks = {
            "llm": (lm.decoder, torch.randn(seq, batch, job.model["llm"].hidden_size, requires_grad=True),
                    {"rotary_pos_emb": lm.rotary_pos_emb(seq)}),
            "vision": (model.modality_submodules["vision"].encoders["clip"].decoder,
                       torch.randn(17, batch, job.model["vision"].hidden_size, requires_grad=True), {}),
        }
        for name, (block, x, kwargs) in blocks.items():
            block.final_layernorm = None  # the stage's last norm is not a layer's
            w = work[name]
            per_layer = saved_elements_per_token(block, x, params, **kwargs) / w.layers
            expected = w.hidden if recompute == "full" else activation_elements_per_token(w, "local")
            assert per_layer == pytest.approx(expected, abs=0.02 * expected + 12), (name, per_layer, expected)
