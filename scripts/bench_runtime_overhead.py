#!/usr/bin/env python3
"""Runtime overhead: the toolkit's training step vs a minimal hand-written megatron-core loop.

Both train the same modules (the recipe's vision encoder + projector and GPT model, built from
the same megatron-core specs) on the same batches, in one process on CPU, alternating step by
step so that machine noise hits both equally. The plain loop is what a user would write
without the toolkit: encoder forward, MimoModel-style alignment at the placeholders, GPT
forward, cross-entropy, backward, gradient clipping, torch's fused AdamW (the toolkit's
optimizer kernel too, on CPU and GPU). The toolkit step adds its
provider, schedule, bridge, data-parallel buffers, the cross-module consensus and metrics.

    python scripts/bench_runtime_overhead.py                # llava tiny, scaled up a little
    python scripts/bench_runtime_overhead.py --steps 40 --set model.llm.num_layers=4

    # 2 processes: homogeneous DP2 over gloo vs the same loop under torch DistributedDataParallel
    python scripts/bench_runtime_overhead.py --procs 2

    # one GPU, bf16: the tiny model (launch-bound: Python overhead shows most) and a ~0.8B LLaVA
    python scripts/bench_runtime_overhead.py --gpu
    python scripts/bench_runtime_overhead.py --gpu --preset 1node --steps 10 --set model.llm.num_layers=8 ...

Prints the median step time of each and their ratio (target <= 1.05). The toolkit's timed step
is what a real step does, metrics write included (checkpoints excluded: save_interval=0). With
``--procs 2`` the plain loop is a user's DDP loop: ``no_sync`` on all micro-batches but the last
(DDP's bucketed all-reduce overlaps that backward), one all-reduce of the loss for the log line
that rank 0 writes.

With ``--gpu`` (NCCL, bf16) the toolkit step runs on its GPU path (megatron-core DDP with fp32
``main_grad`` buffers, fp32 master weights, fused AdamW) and the plain loop is its hand-written
equivalent: bf16 parameters, fp32 master copies, ``clip_grad_norm_`` and torch's fused AdamW on
the masters, the masters copied back into the bf16 parameters. Both end each timed step with
``torch.cuda.synchronize()``.
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

    def __init__(self, job, model, log_path: str, device: torch.device) -> None:
        self.job = job
        self.model = model  # the same megatron-core modules, built by the provider
        self.device = device
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        # DDP over the whole model (one bucketed all-reduce per step) when there are replicas
        self.ddp = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else None
        self.vision = model.modality_submodules["vision"]
        self.gpt = model.language_model
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        self.dtype = params[0].dtype
        # bf16 parameters: AdamW updates fp32 master copies, as any mixed-precision loop does
        self.masters = params if self.dtype == torch.float32 else [p.detach().float().clone() for p in params]
        self.opt = torch.optim.AdamW(self.masters, lr=job.train.lr, betas=(job.train.adam_beta1, job.train.adam_beta2),
                                     fused=True)
        self.data = ReplicaData(build_dataset(job), job, {"vision": self.rank, "llm": self.rank})
        self.special = job.layout.special_token_ids
        self.vocab = job.language_model.vocab_size
        self.log_path = log_path

    def _loss(self, text, media, tokens: float) -> torch.Tensor:
        ids, labels, mask = (t.to(self.device, non_blocking=True) for t in (text.input_ids, text.labels, text.loss_mask))
        pixels = media.items.to(self.device, self.dtype, non_blocking=True)
        emb = self.vision(encoder_inputs={ENCODER_KEY["vision"]: {"x": pixels}})
        text_emb = self.model.get_text_embeddings(ids, None, self.special)
        combined = self.model.align_embeddings_by_token_positions({"vision": emb, "text": text_emb}, ids, self.special)
        logits = self.gpt(input_ids=None, position_ids=None, attention_mask=None, decoder_input=combined)
        logits = logits[..., : self.vocab].float()
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1), reduction="none")
        # DDP averages over replicas: scale so that the result is the global batch's mean
        return loss.mul(mask.reshape(-1)).sum() * (self.world / tokens)

    def step(self, step: int) -> None:
        geometry = self.data.geometry
        texts = [self.data.text(step, mb) for mb in range(geometry.num_microbatches)]
        tokens = torch.tensor([float(sum(t.num_loss_tokens for t in texts))], device=self.device)
        if self.world > 1:
            dist.all_reduce(tokens)
        total = torch.zeros((), device=self.device)
        for mb, text in enumerate(texts):
            media = self.data.media("vision", step, mb)
            last = mb == len(texts) - 1
            with self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext():
                loss = self._loss(text, media, float(tokens))
                loss.backward()
            total += loss.detach()
        if self.masters is not self.params:
            for master, param in zip(self.masters, self.params):
                master.grad = param.grad.float()
        torch.nn.utils.clip_grad_norm_(self.masters, self.job.train.clip_grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.masters is not self.params:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.masters)
            for param in self.params:
                param.grad = None
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
    parser.add_argument("--preset", default="tiny", help="the recipe's preset (the scaled-up defaults apply to tiny only)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per process: NCCL, bf16, the toolkit's CUDA path")
    args = parser.parse_args()
    if args.procs > 1 and not UNDER_TORCHRUN:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.procs}",
               "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", *sys.argv]
        sys.exit(subprocess.run(cmd).returncode)
    total = args.warmup + args.steps
    procs = [f"cluster.procs_per_node={args.procs}", "train.save_interval=0", "cluster.nodes=1"]
    device_sets = ["cluster.gpus_per_node=1", "train.precision=bf16"] if args.gpu else []
    defaults = DEFAULT_SETS if args.preset == "tiny" else ["layout.llm.tp=1", "data.num_workers=0"]
    resolved = resolve_job(args.recipe, args.preset,
                           sets=[*defaults, *procs, *device_sets, f"train.steps={total}", *args.set])
    job = resolved.config
    if not args.gpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.procs))
    ctx = init_distributed(60, want_gpu=args.gpu)
    run_dir = RunDir(tempfile.mkdtemp(prefix="bench-runtime-"))
    trainer = Trainer(job, run_dir, ctx)
    # The plain loop gets the same modules, placed and cast by the provider but not wrapped.
    plain_model = MimoModelProvider.from_job(job).provide_distributed_model(wrap_with_ddp=False)[0]
    plain = PlainLoop(job, plain_model, str(run_dir.path / "plain.jsonl"), ctx.device)
    synchronize = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    toolkit_times, plain_times = [], []
    for step in range(total):
        start = time.perf_counter()
        row, _ = trainer.train_step(step)
        trainer.metrics.log(row)  # a real step writes its metrics row (rank 0)
        synchronize()
        toolkit_s = time.perf_counter() - start
        start = time.perf_counter()
        plain.step(step)
        synchronize()
        plain_s = time.perf_counter() - start
        if step >= args.warmup:
            toolkit_times.append(toolkit_s)
            plain_times.append(plain_s)
    t, p = statistics.median(toolkit_times), statistics.median(plain_times)
    geometry = BatchGeometry.of(job)
    if ctx.rank != 0:
        os._exit(0)
    where = (f"{torch.cuda.get_device_name()} ({ctx.backend}, bf16)" if ctx.device.type == "cuda"
             else f"CPU x {torch.get_num_threads()} threads")
    print(f"model: {args.recipe} {args.preset} + {' '.join(args.set) or 'defaults'}; {geometry.num_microbatches} micro-batches of "
          f"{job.train.micro_batch_size} x {job.train.seq_length} tokens per step; {args.procs} process(es) on {where}"
          + (f", data parallel over {ctx.backend} (toolkit: its own buffers; plain: torch DDP)" if args.procs > 1 else ""))
    print(f"toolkit step: median {t * 1000:.1f} ms over {len(toolkit_times)} steps")
    print(f"plain megatron-core loop: median {p * 1000:.1f} ms over {len(plain_times)} steps")
    print(f"ratio toolkit / plain = {t / p:.3f} (target <= 1.05)")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
