"""The GPU path, checked on CPU: each fault a reading of the CUDA path predicted gets a check here
that would have caught it (issue #16). Nothing here needs a GPU; what only a device can show
is in ``scripts/gpu_check.sh``.

* megatron-core's DDP accepts the runtime's process groups (its own validation code, 4 gloo ranks);
* the RoPE frequency table moves with ``model.to()`` (it is not a parameter or a buffer);
* evaluation reads checkpoints written by transformer-engine layers (their parameter names);
* a broken transformer-engine installation is an error, not a silent fallback;
* the provider honours its contract (hooks' models are the ones moved, cast and wrapped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402

from mimo_toolkit.resolve import resolve_job  # noqa: E402
from mimo_toolkit.runtime.eval.inference import single_process_group, single_rank_job  # noqa: E402
from mimo_toolkit.runtime.eval.reshard import fit_to  # noqa: E402
from mimo_toolkit.runtime.model.portable import stray_tensors  # noqa: E402
from mimo_toolkit.runtime.model.provider import MimoModelProvider, _module_parts  # noqa: E402
from mimo_toolkit.runtime.model.specs import TE_FUSED_NORMS  # noqa: E402

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny_provider():
    """The tiny LLaVA job's provider on a 1-rank gloo group, as evaluation builds it."""
    with single_process_group():
        job = single_rank_job(resolve_job("llava", "tiny").config)
        provider = MimoModelProvider.from_job(job, backend="local")
        provider.finalize()
        provider.get_or_build_infra()
        yield provider


# ---- process groups: megatron-core's own DDP validation --------------------------------------


@pytest.mark.slow
def test_process_groups_pass_megatron_ddp_validation():
    """``tests/process_groups_worker.py`` on 4 gloo ranks: three layouts, every module's groups
    accepted by ``ProcessGroupCollection.setup_process_groups_for_ddp`` (it raised "tp, pp and
    ep process groups are required" before), group members as the layout says, the job's
    timeout on every group, the same group count on every rank, one single-rank group per rank
    shared by every role where the rank is alone."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--max-restarts", "0",
           "--monitor-interval", "0.2", str(TESTS / "process_groups_worker.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("3 layouts checked") == 4


# ---- RoPE placement ---------------------------------------------------------------------------


def test_rope_table_moves_with_the_model_and_stays_fp32(tiny_provider):
    model = tiny_provider.provide()
    rope = model.language_model.rotary_pos_emb
    arch = tiny_provider.language_model_spec.params["config"]
    reference = RotaryEmbedding(kv_channels=arch.hidden_size // arch.num_attention_heads, rotary_percent=1.0,
                                rotary_base=tiny_provider.language_model_spec.params["rotary_base"],
                                use_cpu_initialization=True).inv_freq  # megatron-core's own table
    assert torch.equal(rope.inv_freq, reference)

    model.to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, reference)
    model.to("meta")
    assert stray_tensors(model, "meta") == []
    assert rope.inv_freq.is_meta
    model.to_empty(device="cpu")
    assert stray_tensors(model, "cpu") == []
    assert torch.equal(rope.inv_freq, reference)


# ---- evaluation of checkpoints written by transformer-engine layers -----------------------------


FP8_METADATA = b"\x80\x04 te fp8 scaling state"  # what TE keeps in _extra_state (serialized)


def te_state_dict(local: dict) -> dict:
    """What TE layers would have saved: megatron-core's local spec's own name map
    (``sharded_state_dict_keys_map``: local name -> TE's fused name) and an ``_extra_state``
    per TE module (linear layers and core attention)."""
    keys_map = get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map
    out = {}
    for key, value in local.items():
        for local_name, te_name in keys_map.items():
            key = key.replace(local_name, te_name)
        out[key] = value
    te_modules = {k.rsplit(".", 1)[0] for k in out if k.rsplit(".", 2)[-2] in ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")}
    te_modules |= {m.replace("linear_qkv", "core_attention") for m in te_modules if m.endswith("linear_qkv")}
    out.update({f"{m}._extra_state": FP8_METADATA for m in te_modules})
    return out


def test_te_checkpoint_names_map_to_local_layers(tiny_provider):
    """A TP1 state dict in TE naming merges into the local-layer model used by evaluation."""
    assert {v: k for k, v in TE_FUSED_NORMS.items()} == get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map
    model = tiny_provider.provide()
    for name, part in _module_parts(model, "llm").items():
        local = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in part.state_dict().items()}
        te = te_state_dict(local)
        if name == "llm":  # the test must exercise the renaming and the dropping
            assert any("linear_qkv.layer_norm_weight" in k for k in te) and any(k.endswith("_extra_state") for k in te)
        merged = fit_to(te, part)  # what evaluation reads a checkpoint's full weights with
        assert merged.keys() == local.keys()
        for key, value in local.items():
            assert torch.equal(merged[key], value) if isinstance(value, torch.Tensor) else merged[key] is None, key
        part.load_state_dict(merged)


# ---- transformer-engine installed but broken ---------------------------------------------------


#: transformer-engine installed without its PyTorch extension (``pip install transformer-engine``
#: without the ``[pytorch]`` extra). megatron-core 0.16.1 catches exactly ModuleNotFoundError
#: around its own TE imports and carries on without TE: the case that used to fall back
#: silently. (Any other import error already fails megatron-core's own import: not silent.)
BROKEN_TE = "raise ModuleNotFoundError(\"No module named 'transformer_engine_torch'\")\n"


@pytest.mark.slow
def test_broken_transformer_engine_is_an_error_not_a_silent_fallback(tmp_path):
    """A real (broken) package named transformer_engine on the path, as after a CUDA mismatch:
    a GPU job must fail with the cause; a machine without TE says it uses local layers."""
    (tmp_path / "transformer_engine").mkdir()
    (tmp_path / "transformer_engine/__init__.py").write_text(BROKEN_TE)
    probe = "from mimo_toolkit.runtime.model.specs import detect_backend; print(detect_backend(gpu=True))"
    broken = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert broken.returncode != 0
    assert ("transformer-engine is installed but does not import (ModuleNotFoundError: No module named "
            "'transformer_engine_torch')") in broken.stderr
    missing = subprocess.run([sys.executable, "-W", "always", "-c", probe], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 0 and missing.stdout.strip() == "local"
    assert "transformer-engine is not installed: this GPU job uses megatron-core's local layers" in missing.stderr


# ---- the provider's contract --------------------------------------------------------------------


def test_provider_contract(tiny_provider):
    """``initialize_model_parallel`` refuses (MIMO has no global model-parallel state); the
    device move, the bf16 cast and the wrapping apply to the models the pre-wrap hook returns."""
    with pytest.raises(NotImplementedError, match="build_infra"):
        tiny_provider.initialize_model_parallel(tensor_model_parallel_size=1)
    replaced = []

    def load_other_weights(models):
        other = tiny_provider.provide()
        replaced.append(other)
        return [other]

    models = tiny_provider.provide_distributed_model(bf16=True, pre_wrap_hook=load_other_weights)
    assert models == replaced
    model = models[0]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert set(model.data_parallel) == {"vision", "llm"}
    wrapped = {id(p) for w in model.data_parallel.values() for p in w.params}
    assert wrapped == {id(p) for p in model.parameters() if p.requires_grad}


# ---- context parallelism: refused at render time -------------------------------------------------


def test_context_parallelism_is_refused_at_render_time():
    """The engine does not split the sequence per cp rank: cp > 1 must not validate (it did,
    and every cp rank trained on the whole sequence), and the planner must not propose it."""
    from mimo_toolkit.errors import UserError
    from mimo_toolkit.planner.plan import PlanRequest, make_plan

    with pytest.raises(UserError, match=r"layout.llm.cp=2: context parallelism is not implemented by the runtime"):
        resolve_job("llava", "1node", sets=["layout.llm.cp=2", "layout.llm.tp=4"])
    result = make_plan(PlanRequest("llava", "4node", nodes=4, gpu="h100")).result
    assert result.log.shapes["cp"] > 0
    assert all(p.cp == 1 for c in [*result.top, *result.best.values()] for p in c.placements)
