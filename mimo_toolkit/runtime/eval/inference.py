"""A trained model in ONE process, whatever layout trained it: load, forward, greedy decoding.

The job's model is built TP1/PP1 for every module on a 1-rank gloo group (the same
provider and specs as training, so parameter names and tensor-parallel attributes match),
and each module's weights are the newest checkpoint's full tensors (whatever layout wrote it,
``mimo_toolkit.runtime.eval.reshard``). Fine for models that fit one device: evaluation of
small models, tests, demos.

It always runs on CPU with megatron-core's local layers, also on a GPU machine with
transformer-engine installed (TE layers cannot run on CPU tensors). A checkpoint written by
TE layers names some parameters differently (norms fused into the next linear layer):
``reshard.module_state_dict`` maps them with ``specs.local_parameter_names``.

Greedy decoding recomputes the whole sequence for each new token (no KV cache): the
encoders run once per batch, the LLM once per generated token. Batches are right-padded;
causal attention keeps padding from affecting any earlier position.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ... import checkpoints
from ...config import JobConfig
from ...errors import UserError
from ...layout import ModuleParallelismConfig
from ...run_dir import RunDir
from ..model.provider import MimoModelProvider, _module_parts
from ..train.engine import decoder_input, encode
from .reshard import module_state_dict


@contextlib.contextmanager
def single_process_group():
    """A 1-rank gloo world for the provider's process groups (torn down afterwards)."""
    if dist.is_initialized():
        raise UserError("evaluation builds its own 1-process group; this process already has one")
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def latest_checkpoint(run_dir: RunDir) -> Path:
    info = checkpoints.latest(run_dir)
    if info is None:
        raise UserError(f"{run_dir.path}: no complete checkpoint (train first, or wait for the first save)")
    checkpoints.verify_files(info)
    return info.path


def single_rank_job(job: JobConfig) -> JobConfig:
    """The same job with every module TP1/PP1/DP1 on one rank."""
    out = job.copy()
    for arch in out.model.values():
        arch.pretrained = None  # the checkpoint holds every weight: no Hugging Face import
    out.layout.deployment_mode = "homogeneous"
    out.layout.module_parallelisms = {name: ModuleParallelismConfig() for name in out.layout.module_parallelisms}
    out.layout.finalize(1)
    return out


@dataclass
class LoadedModel:
    job: JobConfig
    """The single-rank job the model was built for."""
    model: torch.nn.Module
    tp_group: dist.ProcessGroup
    checkpoint: Path
    step: int


def load_model(job: JobConfig, checkpoint: Path) -> LoadedModel:
    """Build ``job``'s model TP1/PP1 (inside :func:`single_process_group`) and load ``checkpoint``."""
    single = single_rank_job(job)
    provider = MimoModelProvider.from_job(single, backend="local")
    provider.finalize()
    model = provider.provide()
    for name, part in _module_parts(model, single.layout.language_module).items():
        part.load_state_dict(module_state_dict(checkpoint, name, part))
    model.eval()
    step = json.loads((checkpoint / "meta.json").read_text())["step"]
    tp = provider.get_or_build_infra().pg_collections[single.layout.language_module].tp
    return LoadedModel(single, model, tp, checkpoint, step)


@torch.no_grad()
def encode_media(loaded: LoadedModel, media: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder embeddings of a batch's media (items of all samples, in sample order)."""
    return {name: encode(loaded.model, loaded.job, name, items) for name, items in media.items()}


@torch.no_grad()
def logits(loaded: LoadedModel, input_ids: torch.Tensor, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[b, s, padded vocab]`` next-token logits; padded vocabulary ids are -inf."""
    combined = decoder_input(loaded.model, loaded.job, input_ids, embeddings)
    out = loaded.model.language_model(input_ids=None, position_ids=None, attention_mask=None, decoder_input=combined)
    out[..., loaded.job.language_model.vocab_size :] = float("-inf")
    return out


@torch.no_grad()
def greedy_generate(loaded: LoadedModel, prompts: list[list[int]], media: dict[str, torch.Tensor], eos: int,
                    pad: int, max_new_tokens: int) -> list[list[int]]:
    """The greedy continuation of each prompt, up to (not including) EOS."""
    limit = loaded.job.language_model.max_sequence_length
    lengths = [len(p) for p in prompts]
    width = min(limit, max(lengths) + max_new_tokens)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    embeddings = encode_media(loaded, media)
    done = [n >= width for n in lengths]
    out: list[list[int]] = [[] for _ in prompts]
    while not all(done):
        step_logits = logits(loaded, ids[:, : max(lengths)], embeddings)
        for i in range(len(prompts)):
            if done[i]:
                continue
            token = int(step_logits[i, lengths[i] - 1].argmax())
            if token == eos:
                done[i] = True
                continue
            out[i].append(token)
            ids[i, lengths[i]] = token
            lengths[i] += 1
            done[i] = lengths[i] >= width or len(out[i]) >= max_new_tokens
    return out
