"""One torchrun job that runs several layouts of imported Hugging Face weights, one after another.

``python -m torch.distributed.run --nproc-per-node N tests/hf_parity_worker.py CASES.json OUT_DIR``

For each case (a recipe, a preset and ``--set``s, all with ``model.*.pretrained``) every rank
builds the real trainer (provider, import, bridge, engine, data parallelism), runs ONE step's
forward and backward through the real engine (no optimizer step), and writes
``OUT_DIR/<case>/rank-R.pt``:

* ``logits``: micro-batch -> (sample positions, the LLM's logits gathered over its TP group);
* ``features``: encoder module -> micro-batch outputs of the encoder itself (before the projector);
* ``grads``: module -> canonical parameter name -> (this rank's shard of the summed fp32
  gradient, tp rank, tp size, partition dim, stride, tensor-parallel?), from dp rank 0 only;
* ``numel``: module -> canonical name -> (local numel, tp size, tensor-parallel?), and ``modules``,
  the modules this rank holds;
* ``loss_sum``/``loss_tokens`` of the step; ``read_numel``: module -> elements its import read.

The test process compares everything with transformers (``tests/test_hf_parity.py``).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from mimo_toolkit.runtime.eager import run_eagerly

run_eagerly()
warnings.simplefilter("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mimo_toolkit.resolve import resolve_job  # noqa: E402
from mimo_toolkit.run_dir import RunDir  # noqa: E402
from mimo_toolkit.runtime.model import hf_import  # noqa: E402
from mimo_toolkit.runtime.model.init import canonical_names  # noqa: E402
from mimo_toolkit.runtime.model.specs import ENCODER_KEY  # noqa: E402
from mimo_toolkit.runtime.parallel.distributed import init_distributed  # noqa: E402
from mimo_toolkit.runtime.train import engine as engine_module  # noqa: E402
from mimo_toolkit.runtime.train.trainer import Trainer  # noqa: E402


class Capture:
    """The LLM's logits per micro-batch, taken where the engine computes the loss."""

    def __init__(self) -> None:
        self.logits: dict[int, torch.Tensor] = {}
        self.microbatch = -1
        forward, loss = engine_module.Engine._llm_forward, engine_module.Engine._loss
        capture = self

        def llm_forward(engine, op, inputs, messages):
            capture.microbatch = op.microbatch
            return forward(engine, op, inputs, messages)

        def compute_loss(engine, logits, text):
            gathered = [torch.empty_like(logits) for _ in range(engine.pgcs[engine.lm].tp.size())]
            dist.all_gather(gathered, logits.detach().contiguous(), group=engine.pgcs[engine.lm].tp)
            capture.logits[capture.microbatch] = torch.cat(gathered, dim=-1).float()
            return loss(engine, logits, text)

        engine_module.Engine._llm_forward = llm_forward
        engine_module.Engine._loss = compute_loss


def count_reads(counts: dict) -> None:
    """Elements each module's import reads from the safetensors files (every read goes
    through SliceReader.full/rows/cols)."""
    for name in ("full", "rows", "cols"):
        method = getattr(hf_import.SliceReader, name)

        def counted(reader, *args, _method=method):
            out = _method(reader, *args)
            counts[reader.module] = counts.get(reader.module, 0) + out.numel()
            return out

        setattr(hf_import.SliceReader, name, counted)


def encoder_hooks(trainer: Trainer, features: dict) -> None:
    for name, submodule in trainer.model.modality_submodules.items():
        encoder = submodule.encoders[ENCODER_KEY[trainer.job.model[name].KIND]]
        features[name] = []
        encoder.register_forward_hook(lambda mod, args, out, n=name: features[n].append(out.detach().float()))


def run_case(case: dict, out: Path, ctx, capture: Capture, reads: dict) -> None:
    job = resolve_job(case["recipe"], case.get("preset", "tiny"), sets=case["sets"]).config
    capture.logits.clear()
    reads.clear()
    trainer = Trainer(job, RunDir(out / "run"), ctx)
    features: dict = {}
    encoder_hooks(trainer, features)
    for wrapper in trainer.model.data_parallel.values():
        wrapper.zero_grad_buffer()
    result = trainer.engine.run_step(0)
    for wrapper in trainer.model.data_parallel.values():
        wrapper.finish_grad_sync()
    trainer._sync_tied_embeddings()
    record = {
        "loss_sum": result.loss_sum, "loss_tokens": result.loss_tokens, "features": features,
        "logits": {}, "grads": {}, "numel": {}, "modules": sorted(trainer.parts), "read_numel": dict(reads),
    }
    lm_coords = job.layout.language.coordinates(ctx.rank)
    if lm_coords is not None:
        for mb, logits in capture.logits.items():
            positions = trainer.geometry.positions(0, mb, lm_coords["dp"], job.layout.language.dp)
            record["logits"][mb] = (list(positions), logits)
    for name, part in trainer.parts.items():
        coords = job.layout.module_parallelisms[name].coordinates(ctx.rank)
        canonical = canonical_names(part)
        record["numel"][name] = {
            canonical[n]: (p.numel(), coords["tp"], bool(getattr(p, "tensor_model_parallel", False))) for n, p in part.named_parameters()
        }
        if coords["dp"] != 0:
            continue
        record["grads"][name] = {
            canonical[n]: (p.main_grad.detach().clone(), coords["tp"], job.layout.module_parallelisms[name].tp,
                           getattr(p, "partition_dim", 0), getattr(p, "partition_stride", 1),
                           bool(getattr(p, "tensor_model_parallel", False)))
            for n, p in part.named_parameters() if p.requires_grad
        }
    (out).mkdir(parents=True, exist_ok=True)
    torch.save(record, out / f"rank-{ctx.rank}.pt")
    dist.barrier()


def main(cases_file: str, out_dir: str) -> None:
    cases = json.loads(Path(cases_file).read_text())
    torch.set_num_threads(1)
    ctx = init_distributed(120, want_gpu=False)
    capture, reads = Capture(), {}
    count_reads(reads)
    for case in cases:
        run_case(case, Path(out_dir) / case["name"], ctx, capture, reads)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
