#!/usr/bin/env python3
"""Runtime overhead: the toolkit's training step vs a minimal hand-written megatron-core loop.

Both train the same modules (the recipe's vision encoder + projector and GPT model, built from
the same megatron-core specs) on the same batches, in one process on CPU, alternating step by
step so that machine noise hits both equally. The plain loop is what a user would write
without the toolkit: encoder forward, MimoModel-style alignment at the placeholders, GPT
forward, cross-entropy, backward, gradient clipping, AdamW. The toolkit step adds its
provider, schedule, bridge, data-parallel buffers, the cross-module consensus and metrics.

    python scripts/bench_runtime_overhead.py                # llava tiny, scaled up a little
    python scripts/bench_runtime_overhead.py --steps 40 --set model.llm.num_layers=4

    # 2 processes: homogeneous DP2 over gloo vs the same loop under torch DistributedDataParallel
    python scripts/bench_runtime_overhead.py --procs 2

Prints the median step time of each and their ratio (target <= 1.05). The toolkit's timed step
is what a real step does, metrics write included (checkpoints excluded: save_interval=0). With
``--procs 2`` the plain loop is a user's DDP loop: ``no_sync`` on all micro-batches but the last
(DDP's bucketed all-reduce overlaps that backward), one all-reduce of the loss for the log line
that rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import json
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
UNDER_TORCHRUN = "TORCHELASTIC_RUN_ID" in os.environ
if not UNDER_TORCHRUN:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mimo_toolkit.resolve import resolve_job  # noqa: E402
from mimo_toolkit.run_dir import RunDir  # noqa: E402
from mimo_toolkit.runtime.datasets import build_dataset  # noqa: E402
from mimo_toolkit.runtime.datasets.batching import BatchGeometry, ReplicaData  # noqa: E402
from mimo_toolkit.runtime.model.provider import MimoModelProvider  # noqa: E402
from mimo_toolkit.runtime.model.specs import ENCODER_KEY  # noqa: E402
from mimo_toolkit.runtime.parallel.distributed import init_distributed  # noqa: E402
from mimo_toolkit.runtime.train.trainer import Trainer  # noqa: E402

DEFAULT_SETS = [
    "layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1",
    "model.llm.hidden_size=256", "model.llm.ffn_hidden_size=1024", "model.llm.num_layers=4",
    "model.vision.hidden_size=128", "model.vision.ffn_hidden_size=512", "model.vision.num_layers=4",
    "train.seq_length=128", "train.micro_batch_size=4", "train.global_batch_size=16",
    "data.num_workers=0",  # both load their batches in the training process
]


class PlainLoop:
    """What you would write by hand on megatron-core: no provider, schedule or bridge."""

    def __init__(self, job, model, log_path: str) -> None:
        self.job = job
        self.model = model  # the same megatron-core modules, built by the provider
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        # DDP over the whole model (one bucketed all-reduce per step) when there are replicas
        self.ddp = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else None
        self.vision = model.modality_submodules["vision"]
        self.gpt = model.language_model
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=job.train.lr, betas=(job.train.adam_beta1, job.train.adam_beta2))
        self.data = ReplicaData(build_dataset(job), job, {"vision": self.rank, "llm": self.rank})
        self.special = job.layout.special_token_ids
        self.vocab = job.language_model.vocab_size
        self.log_path = log_path

    def _loss(self, text, media, tokens: float) -> torch.Tensor:
        emb = self.vision(encoder_inputs={ENCODER_KEY["vision"]: {"x": media.items}})
        text_emb = self.model.get_text_embeddings(text.input_ids, None, self.special)
        combined = self.model.align_embeddings_by_token_positions(
            {"vision": emb, "text": text_emb}, text.input_ids, self.special
        )
        logits = self.gpt(input_ids=None, position_ids=None, attention_mask=None, decoder_input=combined)
        logits = logits[..., : self.vocab].float()
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), text.labels.reshape(-1), reduction="none")
        # DDP averages over replicas: scale so that the result is the global batch's mean
        return loss.mul(text.loss_mask.reshape(-1)).sum() * (self.world / tokens)

    def step(self, step: int) -> None:
        geometry = self.data.geometry
        texts = [self.data.text(step, mb) for mb in range(geometry.num_microbatches)]
        tokens = torch.tensor([float(sum(t.num_loss_tokens for t in texts))])
        if self.world > 1:
            dist.all_reduce(tokens)
        total = torch.zeros(())
        for mb, text in enumerate(texts):
            media = self.data.media("vision", step, mb)
            last = mb == len(texts) - 1
            with self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext():
                loss = self._loss(text, media, float(tokens))
                loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.params, self.job.train.clip_grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.world > 1:
            dist.all_reduce(total)
        if self.rank == 0:  # the log line a user's loop writes
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": float(total) / self.world}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="llava")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--procs", type=int, default=1, help="processes (data-parallel replicas), run by torchrun")
    parser.add_argument("--set", action="append", default=[], help="extra overrides (KEY=VALUE)")
    args = parser.parse_args()
    if args.procs > 1 and not UNDER_TORCHRUN:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.procs}",
               "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", *sys.argv]
        sys.exit(subprocess.run(cmd).returncode)
    total = args.warmup + args.steps
    procs = [f"cluster.procs_per_node={args.procs}", "train.save_interval=0"]
    resolved = resolve_job(args.recipe, "tiny", sets=[*DEFAULT_SETS, *procs, f"train.steps={total}", *args.set])
    job = resolved.config
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.procs))
    ctx = init_distributed(60, want_gpu=False)
    run_dir = RunDir(tempfile.mkdtemp(prefix="bench-runtime-"))
    trainer = Trainer(job, run_dir, ctx)
    plain = PlainLoop(job, MimoModelProvider.from_job(job).provide(), str(run_dir.path / "plain.jsonl"))
    toolkit_times, plain_times = [], []
    for step in range(total):
        start = time.perf_counter()
        row, _ = trainer.train_step(step)
        trainer.metrics.log(row)  # a real step writes its metrics row (rank 0)
        toolkit_s = time.perf_counter() - start
        start = time.perf_counter()
        plain.step(step)
        plain_s = time.perf_counter() - start
        if step >= args.warmup:
            toolkit_times.append(toolkit_s)
            plain_times.append(plain_s)
    t, p = statistics.median(toolkit_times), statistics.median(plain_times)
    geometry = BatchGeometry.of(job)
    if ctx.rank != 0:
        os._exit(0)
    print(f"model: {args.recipe} tiny + {' '.join(args.set) or 'defaults'}; {geometry.num_microbatches} micro-batches of "
          f"{job.train.micro_batch_size} x {job.train.seq_length} tokens per step; {args.procs} process(es) x {torch.get_num_threads()} threads"
          + (", data parallel over gloo (toolkit: its own buffers; plain: torch DDP)" if args.procs > 1 else ""))
    print(f"toolkit step: median {t * 1000:.1f} ms over {len(toolkit_times)} steps")
    print(f"plain megatron-core loop: median {p * 1000:.1f} ms over {len(plain_times)} steps")
    print(f"ratio toolkit / plain = {t / p:.3f} (target <= 1.05)")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
