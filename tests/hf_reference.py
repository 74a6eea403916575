"""The transformers side of the parity tests: the same global batch through the Hugging Face
model, its logits and every parameter's gradient (by on-disk tensor name), and the runtime's
gradients assembled from the parity worker's per-rank shards."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from hf_support import hf_input_ids
from mimo_toolkit.hf.pretrained import pretrained_import
from mimo_toolkit.runtime.datasets import build_dataset
from mimo_toolkit.runtime.datasets.batching import BatchGeometry, collate_media, collate_text, sample_index
from mimo_toolkit.runtime.eval.hf_convert import to_hf
from mimo_toolkit.runtime.eval.reshard import unshard


def global_batch(job, step: int = 0):
    """(text batch, media per encoder) of a step's whole global batch, in position order."""
    geometry = BatchGeometry.of(job)
    dataset = build_dataset(job)
    start = step * geometry.global_batch
    indices = [sample_index(p, len(dataset), job.train.seed) for p in range(start, start + geometry.global_batch)]
    text = collate_text([dataset.get(i, ()) for i in indices], job.train.seq_length, job.layout.special_token_ids)
    media = {}
    for name, arch in job.encoders.items():  # one module at a time, as the runtime loads them
        samples = [dataset.get(i, (name,)) for i in indices]
        media[name] = collate_media(samples, name, arch.tokens_per_sample).items
    return text, media


def disk_names(model: torch.nn.Module, directory: Path) -> dict[str, torch.nn.Parameter]:
    """On-disk tensor name -> the in-memory parameter holding it (transformers 5 renames keys in
    memory; random tensors are unique, so equal values identify them)."""
    from safetensors.torch import load_file

    params = list(model.named_parameters())
    out = {}
    for name, tensor in load_file(str(directory / "model.safetensors")).items():
        match = [p for _, p in params if p.shape == tensor.shape and torch.equal(p.detach(), tensor)]
        if match:
            out[name] = match[0]
    return out


def llava_reference(directory: Path, job, dtype=torch.float32):
    """HF LLaVA on the job's step-0 global batch: (logits [G, s, V], loss, grads by on-disk name)."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    model.train()
    names = disk_names(model, directory) if dtype == torch.float32 else {}
    text, media = global_batch(job)
    out = model(input_ids=hf_input_ids(text.input_ids, job.layout.special_token_ids),
                pixel_values=media["vision"].to(dtype)).logits.float()
    per_token = F.cross_entropy(out.flatten(0, 1), text.labels.flatten(), reduction="none")
    loss = (per_token * text.loss_mask.flatten()).sum() / text.loss_mask.sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in names.items()}
    return out.detach(), loss.item(), grads


def merged_grads(records: list[dict], module: str) -> dict[str, torch.Tensor]:
    """Full fp32 gradients of ``module`` from the ranks' shards (dp rank 0 of each TP rank/stage)."""
    shards: dict[str, dict[int, tuple]] = {}
    for record in records:
        for name, entry in record["grads"].get(module, {}).items():
            shards.setdefault(name, {})[entry[1]] = entry
    full = {}
    for name, by_rank in shards.items():
        entry = by_rank[0]
        _, _, tp, dim, stride, parallel = entry
        parts = [by_rank[r][0] for r in range(tp)] if parallel and tp > 1 else [entry[0]]
        full[name] = unshard(parts, dim, stride) if len(parts) > 1 else parts[0]
    return full


def hf_grads_of(job, module: str, records: list[dict]) -> dict[str, torch.Tensor]:
    """The runtime's gradients of ``module`` as Hugging Face tensors (on-disk names)."""
    return to_hf(pretrained_import(job, module).rules, merged_grads(records, module))


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|; for a reference that is zero in exact arithmetic (CLIP's key
    bias: softmax ignores it) the absolute difference over 1e-3."""
    scale = ref.abs().max().item()
    diff = (ours.float() - ref.float()).abs().max().item()
    return diff / scale if scale > 1e-6 else diff / 1e-3


def load_records(case_dir: Path) -> list[dict]:
    return [torch.load(p, weights_only=False) for p in sorted(case_dir.glob("rank-*.pt"))]
