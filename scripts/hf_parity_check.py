#!/usr/bin/env python3
"""Imported Hugging Face weights vs transformers on ONE device: the GPU check's parity part.

    python3 scripts/hf_parity_check.py [--cpu]        (scripts/gpu_check.sh runs it too)

A tiny random LLaVA (``make_tiny_hf.py``) is imported into llava's tiny preset on one rank
through the real provider (on a GPU: transformer-engine layers, megatron-core DDP, bf16
parameters), and its logits on synthetic images and text are compared with
``LlavaForConditionalGeneration`` on the same device:

* fp32 (on a GPU with TF32 off): max |diff| <= 1e-3 (CPU tests: <= 1e-4, measured 0);
* bf16, against transformers in bf16 and in fp32: max |diff| <= 0.1 and mean <= 0.015
  (the CPU test's tolerances; measured there: 0.055 and 0.008).

The multi-process layouts (TP2, PP2, heterogeneous) and every gradient are checked on CPU
by tests/test_hf_parity.py; this is what only a device adds (TE's fused norm names, CUDA
kernels).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOLERANCES = {"fp32": (1e-3, None), "bf16": (0.1, 0.015)}


def logits_of(ckpt: Path, precision: str, gpu: bool):
    """(ours [b, s, V], transformers' in bf16 and fp32 {dtype: [b, s, V]}) on the device."""
    import torch
    import torch.distributed as dist
    from transformers import LlavaForConditionalGeneration

    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.runtime.datasets import build_dataset
    from mimo_toolkit.runtime.datasets.batching import collate_media, collate_text
    from mimo_toolkit.runtime.model.provider import MimoModelProvider
    from mimo_toolkit.runtime.train.engine import decoder_input, encode

    sets = [f"model.vision.pretrained={ckpt}", f"model.llm.pretrained={ckpt}", "model.vision.num_layers=3",
            "cluster.nodes=1", "cluster.procs_per_node=1", "layout.llm.tp=1", f"train.precision={precision}",
            f"cluster.gpus_per_node={1 if gpu else 0}"]
    job = resolve_job("llava", "tiny", sets=sets).config
    device = torch.device("cuda" if gpu else "cpu")
    model = MimoModelProvider.from_job(job).provide_distributed_model()[0].eval()
    samples = [build_dataset(job).get(i, ("vision",)) for i in range(4)]
    text = collate_text(samples, job.train.seq_length, job.layout.special_token_ids)
    pixels = collate_media(samples, "vision", 16).items.to(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.no_grad():
        embeddings = {"vision": encode(model, job, "vision", pixels.to(dtype))}
        ids = text.input_ids.to(device)
        ours = model.language_model(input_ids=None, position_ids=None, attention_mask=None,
                                    decoder_input=decoder_input(model, job, ids, embeddings))
        hf_ids = ids.clone()
        hf_ids[hf_ids == job.layout.special_token_ids["vision"]] = 300  # make_tiny_hf's image token
        theirs = {}
        for label, hf_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            hf = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=hf_dtype).to(device).eval()
            theirs[label] = hf(input_ids=hf_ids, pixel_values=pixels.to(hf_dtype)).logits.float()
    dist.barrier()
    return ours.float()[..., : job.language_model.vocab_size], theirs


def checks(gpu: bool, out: Path) -> list[tuple[str, bool, str]]:
    """(name, passed, figures) per precision."""
    import torch
    import torch.distributed as dist

    from make_tiny_hf import make_llava

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ckpt = make_llava(out / "tiny-llava") if not (out / "tiny-llava/config.json").exists() else out / "tiny-llava"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("nccl" if gpu else "gloo", store=store, rank=0, world_size=1)
        try:
            for precision, (max_tol, mean_tol) in TOLERANCES.items():
                ours, theirs = logits_of(ckpt, precision, gpu)
                refs = {"fp32": theirs["fp32"]} if precision == "fp32" else theirs
                worst = {k: ((ours - r).abs().max().item(), (ours - r).abs().mean().item()) for k, r in refs.items()}
                ok = all(m <= max_tol and (mean_tol is None or a <= mean_tol) for m, a in worst.values())
                detail = "; ".join(f"vs transformers {k}: max {m:.2e}, mean {a:.2e}" for k, (m, a) in worst.items())
                results.append((f"hf parity {precision}", ok, f"{detail} (tolerance max {max_tol}"
                                f"{f', mean {mean_tol}' if mean_tol else ''})"))
        finally:
            dist.destroy_process_group()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="on the CPU (gloo) instead of a GPU")
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="hf-parity-"))
    args = parser.parse_args()
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    failed = 0
    for name, ok, detail in checks(not args.cpu, Path(args.out)):
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        failed += not ok
    return failed


if __name__ == "__main__":
    sys.exit(main())
