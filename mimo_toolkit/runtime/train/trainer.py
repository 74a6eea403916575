"""The training loop, top to bottom.

Build order: process groups -> model (per-module layouts, rank roles, freezing, data
parallelism) -> optimizers -> transport and bridge -> data -> schedule -> checkpointer ->
resume. Each step: zero gradient buffers, run this rank's schedule (forward and backward of
every micro-batch), reduce gradients per module, agree on the global gradient norm and on
inf/nan across all modules, step every module's optimizer (or all skip), log, checkpoint,
and stop cleanly when a preemption signal arrived anywhere.

With ``train.eval_interval`` the validation loss (forward only, same layout) joins the
step's metrics row every N steps and at the end; rank 0 then plots the loss curves
(``curves.png`` in the run directory).
"""

from __future__ import annotations

import json
import time

import torch
import torch.distributed as dist

from ...config import JobConfig
from ...run_dir import EXIT_REQUEUE, RunDir
from ..datasets import build_dataset
from ..datasets.batching import BatchGeometry, ReplicaData, ValidationData, sample_index
from ..datasets.loader import make_loader
from ..eval.plot import plot_curves
from ..model import recompute
from ..model.provider import MimoModelProvider, _module_parts
from ..parallel.bridge import make_bridge
from ..parallel.distributed import DistContext
from ..parallel.p2p import P2P
from .checkpoint import Checkpointer
from .memory_probe import MemoryProbe
from .engine import Engine
from .metrics import MetricsLog, device_peak, model_flops_per_step, slowest_times
from .optim import ModuleOptimizer, clip_coefficient, counts_for_norm, step_consensus
from .rendezvous import step_programs
from .schedule import backward_modules
from .trace import StepTrace
from .trackers import open_trackers


class Trainer:
    def __init__(self, job: JobConfig, run_dir: RunDir, ctx: DistContext) -> None:
        self.job = job
        self.run_dir = run_dir
        self.ctx = ctx
        self.rank = ctx.rank
        layout = job.layout
        self.backward = backward_modules(job)

        self.memory = MemoryProbe(ctx.device)  # from here on: what the planner's memory model predicts

        # Model: per-module grids and process groups, this rank's modules, data parallelism.
        self.provider = MimoModelProvider.from_job(job)
        recompute.apply(self.provider, job.train.recompute)
        self.provider.finalize()
        self.sharded = job.train.uses_distributed_optimizer(gpus=ctx.device.type == "cuda")
        self.model = self.provider.provide_distributed_model(ddp_config=ddp_config(self.sharded))[0]
        self.infra = self.provider.get_or_build_infra()
        self.pgcs = self.infra.pg_collections
        self.parts = _module_parts(self.model, layout.language_module)
        self.dtype = torch.bfloat16 if self.provider.bf16 else torch.float32
        self.optimizers = self._build_optimizers()

        # Transport, data and schedule.
        self.geometry = BatchGeometry.of(job)
        self.p2p = P2P(ctx.backend, ctx.timeout)
        self.bridge = make_bridge(
            layout, self.pgcs, self.geometry.micro_batch, job.language_model.hidden_size, self.dtype, ctx.device
        )
        replica_of = {name: layout.module_parallelisms[name].coordinates(self.rank)["dp"] for name in self.parts}
        dataset = build_dataset(job)
        self.bad_samples: int | None = getattr(dataset, "bad_samples", None)  # file datasets count them
        self.bad_report = dataset.bad_report() if self.bad_samples else ""
        self.dataset_size = len(dataset)
        self.undecodable: set[int] = set()
        """Dataset indices of samples dropped because their media failed to decode (kept in checkpoints)."""
        self.data = make_loader(ReplicaData(dataset, job, replica_of), job.train.steps, ctx.device)
        program = step_programs(layout, self.geometry.num_microbatches, self.backward, self.geometry.micro_batch)[self.rank]
        self.engine = Engine(
            job, self.model, self.pgcs, self.bridge, self.p2p, self.data, self.backward, program, ctx.device, self.dtype
        )
        self.validator = None
        if job.train.eval_interval:
            forward = step_programs(layout, self.geometry.num_microbatches, set(), self.geometry.micro_batch)[self.rank]
            self.valid_data = ValidationData(build_dataset(job, "valid"), job, replica_of)
            valid = make_loader(self.valid_data, self.valid_data.steps, ctx.device)
            self.validator = Engine(
                job, self.model, self.pgcs, self.bridge, self.p2p, valid, set(), forward, ctx.device, self.dtype
            )
        self.checkpointer = Checkpointer(run_dir, job, self.parts, self.optimizers, job.train.async_save)
        self.metrics = MetricsLog(run_dir, self.rank, job.train.steps, job.train.log_interval)
        self.trace = StepTrace(run_dir.path, self.rank)
        self.module_names = list(layout.module_parallelisms)
        self.flops_per_step = model_flops_per_step(job)
        self.peak = device_peak(ctx.device, job.train.precision)
        self.time_keys = [f"{m}/{k}" for m in self.module_names for k in ("fwd", "bwd", "wait")]
        self.step = 0
        self._report_optimizer_state()
        self._report_import()

    def _build_optimizers(self) -> dict[str, ModuleOptimizer]:
        """One optimizer per module this rank trains, over the pieces its data-parallel wrapper
        assigns to this rank (whole parameters, or one shard with a distributed optimizer)."""
        optimizers = {}
        for name, wrapper in self.model.data_parallel.items():
            c = self.job.layout.module_parallelisms[name].coordinates(self.rank)
            counted = wrapper.sharded or (c["dp"] == 0 and c["cp"] == 0)
            optimizers[name] = ModuleOptimizer(
                name, wrapper, self.job.train, lambda p, c=c: counts_for_norm(p, c["tp"], c["pp"]), counted
            )
        return optimizers

    def _report_optimizer_state(self) -> None:
        """One line on rank 0: each module's optimizer state bytes on each of its ranks."""
        mine = [float(self.optimizers[m].state_bytes()) if m in self.optimizers else -1.0 for m in self.module_names]
        every = _gather_floats(mine, self.ctx)
        table = {m: {r: int(v[i]) for r, v in enumerate(every) if v[i] >= 0} for i, m in enumerate(self.module_names)}
        kind = "distributed" if self.sharded else "replicated"
        self.metrics.say(f"[mimo-toolkit] optimizer state bytes per rank ({kind}): {json.dumps(table)}")

    def _report_import(self) -> None:
        """One line on rank 0 where the job imports pretrained weights: each module's import
        seconds on each of its ranks, and the CPU threads each rank copied on (a slow import on a
        cluster shows here, not only as a late first step)."""
        if not any(arch.pretrained for arch in self.job.model.values()):  # the same on every rank
            return
        from ..parallel.cpu_threads import rank_cpu_share

        seconds = self.provider.import_seconds
        every = _gather_floats([seconds.get(m, -1.0) for m in self.module_names], self.ctx)
        table = {m: {r: round(v[i], 2) for r, v in enumerate(every) if v[i] >= 0} for i, m in enumerate(self.module_names)}
        table = {m: ranks for m, ranks in table.items() if ranks}
        threads = max(torch.get_num_threads(), rank_cpu_share())
        self.metrics.say(f"[mimo-toolkit] pretrained import seconds per rank ({threads} CPU thread(s) each): "
                         f"{json.dumps(table)}")

    # ---- the loop -----------------------------------------------------------------------------
    def train(self) -> int:
        if self.bad_report:
            self.metrics.say(f"[mimo-toolkit] data: skipping {self.bad_report}")
        self.step = self.resume()
        self.metrics.trackers = open_trackers(self.job, self.run_dir, self.rank, self.step)
        try:
            return self._train_loop()
        finally:
            self.metrics.close()

    def _train_loop(self) -> int:
        train = self.job.train
        last_saved = self.step
        if self.step < train.steps and self._stop_agreed():
            # Preempted while starting up: nothing new to save unless this is a fresh start.
            return self._exit_for_requeue(save=self.checkpointer.latest() is None)
        while self.step < train.steps:
            row, stop = self.train_step(self.step)
            self.step += 1
            if self.validator and not stop and (self.step % train.eval_interval == 0 or self.step == train.steps):
                row["valid_loss"] = self.validate()
            if stop:
                self.metrics.log(row)
                return self._exit_for_requeue(save=True)
            if train.save_interval and self.step % train.save_interval == 0 and self.step < train.steps:
                started = time.perf_counter()
                self.save(blocking=False)  # in the background; the next save waits for it
                row["checkpoint_s"] = time.perf_counter() - started  # how long training waited
                last_saved = self.step
            self.trace.phase("metrics write")
            self.metrics.log(row)
            self.trace.flush(self.step)
        if last_saved != self.step or self.checkpointer.latest() is None:
            self.save(blocking=True)
        self.checkpointer.wait(raise_error=True)
        if self.rank == 0:
            self.run_dir.write_exit_status("completed", step=self.step)
            self.metrics.say(plot_curves(self.run_dir, f"{self.job.recipe}/{self.job.preset}: {self.run_dir.path.name}"))
        return 0

    def _stop_agreed(self) -> bool:
        """Whether any rank got a stop signal (one all-reduce; every rank decides the same)."""
        flag = torch.tensor([float(self.ctx.stop_requested.is_set())], device=self.ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def _exit_for_requeue(self, save: bool) -> int:
        """Save (waiting for a save in flight first), mark the run preempted, exit 75. A save
        that fails leaves the previous checkpoint, which the requeued job resumes."""
        saved = "nothing new to save"
        try:
            if save:
                self.save(blocking=True)
                saved = f"saved step {self.step}"
            self.checkpointer.wait(raise_error=True)
        except RuntimeError as exc:
            saved = str(exc)
        self.metrics.say(f"[mimo-toolkit] {self.ctx.stop_signal or 'stop'} received: {saved}, exiting for requeue")
        if self.rank == 0:
            self.run_dir.write_exit_status("preempted", step=self.step)
        return EXIT_REQUEUE

    def train_step(self, step: int) -> tuple[dict, bool]:
        start = time.perf_counter()
        trace = self.trace
        trace.phase("zero grads")
        for wrapper in self.model.data_parallel.values():
            wrapper.zero_grad_buffer()
        trace.phase("forward/backward")
        out = self.engine.run_step(step)
        trace.extend(self.engine.clock.spans())
        trace.phase("gradient sync")
        self._sync_tied_embeddings()  # before the data-parallel reduction: a sharded one leaves
        for wrapper in self.model.data_parallel.values():  # only each rank's slice valid
            wrapper.finish_grad_sync()
        trace.phase("consensus")
        consensus = step_consensus(
            self.optimizers, self.module_names, out.loss_sum, out.loss_tokens,
            self.ctx.stop_requested.is_set(),
            (self.bridge.stats.forward_bytes, self.bridge.stats.backward_bytes), self.ctx.device,
        )
        # The metrics' collectives start now and are waited for after the optimizers: no rank
        # waits there for another rank's optimizer, so an encoder rank starts the next step's
        # forwards while the LLM still steps (issue #13). Peak memory is read before this
        # step's optimizer (its first allocation of Adam state shows from the next step on).
        times = slowest_times(out.times, self.time_keys, self.ctx.device)
        memory = self._peak_memory()
        lr = None
        trace.phase("optimizer")
        if consensus.finite:
            coef = clip_coefficient(consensus.grad_norm, self.job.train.clip_grad)
            for opt in self.optimizers.values():
                lr = opt.step(coef)
        else:
            for opt in self.optimizers.values():
                opt.skip()
        trace.phase("metrics")
        times, memory = times(), memory()
        step_time = time.perf_counter() - start
        tokens = self.job.train.global_batch_size * self.job.train.seq_length
        row = {
            "step": step + 1,
            "loss": consensus.loss,
            "lr": lr if lr is not None else _lr_now(self.job, step),
            "grad_norm": consensus.grad_norm,
            "module_grad_norm": consensus.module_grad_norms,
            "step_time_s": step_time,
            "tokens_per_s": tokens / step_time,
            "mfu": self.flops_per_step / (step_time * self.ctx.world_size * self.peak.flops_per_s) if self.peak else None,
            "mfu_peak": self.peak.description if self.peak else None,
            "loss_tokens": consensus.loss_tokens,
            "module_time_s": times,
            "bridge_bytes": consensus.bridge_bytes,
            "skipped": not consensus.finite,
            "peak_memory_bytes": memory,
        }
        self._count_undecodable(step, out.undecodable)
        if self.bad_samples is not None:
            row["bad_samples"] = self.bad_samples + len(self.undecodable)
        return row, consensus.stop

    def _peak_memory(self):
        """Every rank's peak memory so far (``MemoryProbe``), by rank: gathered in the
        background, returned by calling the result."""
        mine = self.memory.peak_bytes()
        gathered = _gather_floats([-1.0 if mine is None else float(mine)], self.ctx, wait=False)

        def result() -> dict[str, int]:
            return {str(r): int(v[0]) for r, v in enumerate(gathered()) if v[0] >= 0}

        return result

    def validate(self) -> float:
        """Mean per-token loss over the whole validation split (forward only, this layout)."""
        loss_sum, tokens = 0.0, 0
        for k in range(self.valid_data.steps):
            out = self.validator.run_step(k)
            loss_sum, tokens = loss_sum + out.loss_sum, tokens + out.loss_tokens
        totals = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(totals)  # loss sums come from TP rank 0 of each LLM replica's last stage
        return totals[0].item() / max(totals[1].item(), 1.0)

    # ---- pieces -------------------------------------------------------------------------------
    def _sync_tied_embeddings(self) -> None:
        """Tied input/output embeddings on different pipeline stages: sum their gradients."""
        lm = self.model.language_model
        llm_arch = self.job.language_model
        if lm is None or not llm_arch.tie_embeddings or self.job.layout.language.pp == 1:
            return
        pgc = self.pgcs[self.job.layout.language_module]
        weight = lm.shared_embedding_or_output_weight()
        if weight is not None and weight.requires_grad:
            dist.all_reduce(weight.main_grad, group=pgc.embd)

    def _count_undecodable(self, step: int, offsets: list[int]) -> None:
        """Remember which samples were dropped (a sample met again in a later epoch counts once)."""
        first = step * self.job.train.global_batch_size
        self.undecodable.update(sample_index(first + k, self.dataset_size, self.job.train.seed) for k in offsets)

    def save(self, blocking: bool) -> None:
        meta = {
            "consumed_samples": self.step * self.job.train.global_batch_size,
            "config_hash": self.job.config_hash(),
            "config": self.job.to_dict(),
            "undecodable": sorted(self.undecodable),
        }
        self.checkpointer.save(self.step, meta, blocking=blocking)

    def resume(self) -> int:
        """Load the newest checkpoint (any layout wrote it); the data position is its step."""
        meta = self.checkpointer.load_latest()
        if meta is None:
            return 0
        rng = "" if meta["rng_restored"] else "; RNG states re-seeded (the layout changed; no dropout, so no effect)"
        self.metrics.say(f"[mimo-toolkit] resumed from step {meta['step']} "
                         f"({meta['consumed_samples']} samples consumed){rng}")
        self.undecodable = set(meta.get("undecodable", []))
        if self.rank == 0:
            _drop_metrics_after(self.run_dir, int(meta["step"]))
        return int(meta["step"])


def _gather_floats(values: list[float], ctx: DistContext, wait: bool = True):
    """Every rank's ``values``, in rank order, over the world group (never the checkpoint
    group: a background save runs its collectives there). ``wait=False``: started, and a
    function that waits for it and returns them."""
    mine = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    every = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    work = dist.all_gather(every, mine, async_op=True)

    def result() -> list[list[float]]:
        work.wait()
        return [t.tolist() for t in every]

    return result() if wait else result


def _drop_metrics_after(run_dir: RunDir, step: int) -> None:
    """Rows of steps after the checkpoint (a run that died before its next save) are redone."""
    rows = run_dir.read_metrics()
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) != len(rows):
        tmp = run_dir.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(run_dir.metrics_file)


def ddp_config(distributed_optimizer: bool):
    """megatron-core's data-parallel settings (the CPU wrapper reads the sharding flag too)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=distributed_optimizer
    )


def _lr_now(job: JobConfig, step: int) -> float:
    from .optim import lr_at

    return lr_at(step, job.train)
