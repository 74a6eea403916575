"""What only a GPU can show, in one run on ONE GPU (world size 1), within 8 minutes on an H100.

Run it through ``scripts/gpu_check.sh`` (``--cpu``: the same checks with tiny sizes over gloo,
to exercise this script where no GPU is). Each check prints PASS or FAIL with its figures;
the summary goes to ``OUT/gpu_check.json``; the exit code is the number of failures.

1. environment: torch, CUDA, the device and its published peak (``mimo_toolkit.costs``),
   transformer-engine;
2. model (in this process, a 1-rank NCCL group): the provider picks TE layers, every module
   that trains gets megatron-core DDP, parameters are bf16 on the GPU, the RoPE table and
   every other tensor moved with the model;
3. bf16 training + evaluation on the GPU box: the tiny LLaVA learns a little of the shapes
   task (the real entrypoint under torchrun), then ``mimo-toolkit eval`` reads its
   TE-written checkpoint with local layers and reproduces the validation loss;
4. imported Hugging Face weights: logits vs transformers on the device (``scripts/hf_parity_check.py``);
5. speed: a ~1.2B LLaVA (CLIP ViT-L/14-336 + a 16-layer 2048-wide LLM) at micro-batch 8,
   sequence 2048, everything trained: median tokens/s and MFU over the steps after warm-up.

Multi-GPU paths (NCCL p2p between pipeline stages or heterogeneous modules, TP over NVLink)
need more than one GPU and are not checked here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The CLI through this interpreter (a wheel unpacked with ``pip install --target`` has no console script).
MIMO = [sys.executable, "-m", "mimo_toolkit.cli"]

#: One GPU, one rank; the layout follows (tp 1, dp 1).
ONE_RANK = ["cluster.nodes=1", "cluster.procs_per_node=1", "layout.llm.tp=1"]
#: ~1.2B parameters: CLIP ViT-L/14-336 (0.30B) + projector + a 16 x 2048 LLM (0.95B).
LLAVA_1B = ["model.llm.num_layers=16", "model.llm.hidden_size=2048", "model.llm.num_attention_heads=16",
            "model.llm.ffn_hidden_size=5632", "freeze.llm=false", "freeze.vision=false"]


class Report:
    """PASS/FAIL lines as they happen, and the JSON summary."""

    def __init__(self) -> None:
        self.checks: list[dict] = []
        self.start = time.monotonic()

    def check(self, name: str, ok: bool, detail: str = "", **figures) -> bool:
        took = time.monotonic() - self.start
        print(f"[{took:6.1f} s] {'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail, **figures})
        return ok

    def skip(self, name: str, why: str) -> None:
        """A check this machine cannot run (said, listed in the JSON, not counted as a failure)."""
        print(f"[{time.monotonic() - self.start:6.1f} s] SKIP {name}: {why}", flush=True)
        self.checks.append({"check": name, "ok": None, "detail": why})

    @property
    def failures(self) -> int:
        return sum(c["ok"] is False for c in self.checks)


# ---- 1. environment --------------------------------------------------------------------------


def check_environment(report: Report, gpu: bool) -> None:
    import torch

    from mimo_toolkit.costs.devices import device_by_cuda_name

    report.check("torch", True, f"{torch.__version__}, CUDA {torch.version.cuda}")
    if not gpu:
        return
    if not report.check("cuda", torch.cuda.is_available(), "a GPU is visible"):
        return
    name = torch.cuda.get_device_name(0)
    known = device_by_cuda_name(name)
    report.check("device", known is not None, f"{name!r} -> {known.describe_peak('bf16', False) if known else 'unknown: no MFU'}")
    if not te_installed():
        report.skip("transformer-engine", "not installed: the GPU jobs below use megatron-core's local layers")
        return
    import transformer_engine

    report.check("transformer-engine", True, transformer_engine.__version__)


def te_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_engine") is not None


# ---- 2. the model on the device ---------------------------------------------------------------


@contextlib.contextmanager
def one_rank_group(gpu: bool):
    """A 1-rank world: NCCL on the GPU (the provider places the model by it), else gloo."""
    import torch
    import torch.distributed as dist

    if gpu:
        torch.cuda.set_device(0)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl" if gpu else "gloo", store=dist.FileStore(f"{tmp}/store", 1), rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def check_model(report: Report, gpu: bool, sets: list[str]) -> None:
    import torch

    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.runtime.model.portable import stray_tensors
    from mimo_toolkit.runtime.model.provider import MimoModelProvider

    job = resolve_job("llava", "tiny", sets=sets).config
    with one_rank_group(gpu):
        provider = MimoModelProvider.from_job(job)
        provider.finalize()
        model = provider.provide_distributed_model()[0]
        device = "cuda" if gpu else "cpu"
        te = gpu and te_installed()
        report.check("layer backend", provider.backend == ("te" if te else "local"), provider.backend)
        te_layers = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("TE")})
        if te:
            report.check("TE layers built", bool(te_layers), ", ".join(te_layers) or "none (local layers)")
        elif gpu:
            report.skip("TE layers built", "transformer-engine is not installed")
        # On a GPU each module's wrapper holds megatron-core's own DistributedDataParallel (``.ddp``).
        wrappers = {name: type(getattr(w, "ddp", w)).__name__ for name, w in model.data_parallel.items()}
        expected = "DistributedDataParallel" if gpu else "PortableDataParallel"
        report.check("data-parallel wrap", set(wrappers) == {"vision", "llm"} and set(wrappers.values()) == {expected},
                     json.dumps(wrappers))
        dtypes = {str(p.dtype) for p in model.parameters()}
        places = {p.device.type for p in [*model.parameters(), *model.buffers()]}
        report.check("bf16 parameters on the device", dtypes == {"torch.bfloat16"} and places == {device},
                     f"dtypes {sorted(dtypes)}, devices {sorted(places)}")
        rope = model.language_model.rotary_pos_emb.inv_freq
        stray = stray_tensors(model, device)
        report.check("RoPE table and plain tensors moved", rope.device.type == device and rope.dtype == torch.float32
                     and not stray, f"inv_freq {rope.dtype} on {rope.device}; left behind: {stray or 'none'}")
        del model
    if gpu:
        torch.cuda.empty_cache()


# ---- 3. and 4. real jobs under torchrun ---------------------------------------------------------


def run_job(run_dir: Path, preset: str, sets: list[str], timeout: float) -> tuple[int, str, list[dict]]:
    """Train with the real entrypoint (torchrun, 1 rank); returns (exit code, output tail, metrics)."""
    from mimo_toolkit.resolve import resolve_job
    from mimo_toolkit.run_dir import RunDir
    from mimo_toolkit.torchrun import torchrun_args, train_args

    resolved = resolve_job("llava", preset, sets=sets)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.json").write_text(json.dumps(resolved.manifest(), indent=2))
    cmd = torchrun_args(python=sys.executable, nnodes=1, nproc_per_node=1, rdzv_endpoint="localhost:0",
                        module_args=train_args(str(run_dir / "job.json"), str(run_dir)))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:], RunDir(run_dir).read_metrics()


def check_train_and_eval(report: Report, out: Path, sets: list[str], steps: int) -> None:
    data = out / "shapes-data"
    subprocess.run([sys.executable, str(REPO / "scripts/make_shapes_dataset.py"), "--out", str(data), "--seed", "0",
                    "--train", "512", "--valid", "32", "--categories", "color"], check=True, capture_output=True)
    run_dir = out / "tiny-run"
    code, tail, rows = run_job(run_dir, "tiny", [
        *sets, "data.source=llava", f"data.path={data}/train.json", f"data.valid_path={data}/valid.json",
        "train.seq_length=80", f"train.steps={steps}", f"train.eval_interval={steps // 2}", "train.save_interval=0",
        "train.micro_batch_size=16", "train.global_batch_size=32", "train.lr=1e-3", "train.lr_warmup_steps=5",
    ], timeout=300)
    if not report.check("bf16 training run", code == 0, f"exit {code}" + ("" if code == 0 else f"\n{tail}")):
        return
    valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
    report.check("loss falls", rows[-1]["loss"] < rows[0]["loss"] and valid[-1] < valid[0],
                 f"train {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}, valid {valid[0]:.3f} -> {valid[-1]:.3f}")
    proc = subprocess.run([*MIMO, "eval", str(run_dir)], capture_output=True, text=True, timeout=300)
    if not report.check("eval on this machine", proc.returncode == 0, proc.stdout.strip()[-300:] or proc.stderr[-2000:]):
        return
    result = json.loads((run_dir / "eval.json").read_text())
    close = abs(result["valid_loss"] - valid[-1]) <= 0.02 * valid[-1]  # bf16 training vs fp32 evaluation
    report.check("eval reproduces the validation loss", close,
                 f"eval {result['valid_loss']:.4f} vs training {valid[-1]:.4f}; accuracy {100 * result['accuracy']:.1f}%")


def check_speed(report: Report, out: Path, preset: str, sets: list[str], steps: int) -> None:
    code, tail, rows = run_job(out / "speed-run", preset, [
        *sets, "train.micro_batch_size=8", "train.global_batch_size=16", f"train.steps={steps}",
        "train.save_interval=0", "train.log_interval=1",
    ], timeout=420)
    if not report.check("speed run", code == 0, f"exit {code}" + ("" if code == 0 else f"\n{tail}")):
        return
    timed = rows[2:] or rows  # the first steps include compilation and allocator warm-up
    tokens = statistics.median(r["tokens_per_s"] for r in timed)
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    mfu = statistics.median(mfus) if mfus else None
    peak = rows[-1].get("mfu_peak")
    report.check("throughput", True, f"{tokens:,.0f} tokens/s; MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
                 f" of {peak or 'no known peak'} (median of {len(timed)} steps)", tokens_per_s=tokens, mfu=mfu,
                 mfu_peak=peak, step_time_s=statistics.median(r["step_time_s"] for r in timed))


# ---- main -------------------------------------------------------------------------------------


def check_parity(report: Report, out: Path, gpu: bool) -> None:
    """Imported Hugging Face weights vs transformers on the device, fp32 and bf16 (scripts/hf_parity_check.py)."""
    parity = subprocess.run([sys.executable, str(REPO / "scripts/hf_parity_check.py"), *([] if gpu else ["--cpu"]),
                             "--out", str(out)], capture_output=True, text=True, timeout=240)
    report.check("hf parity", parity.returncode == 0, " | ".join(
        line for line in parity.stdout.splitlines() if line.startswith(("PASS", "FAIL"))) or parity.stderr[-500:])


PHASES = ("environment", "model", "speed", "train", "parity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="dry mode: the same checks, tiny sizes, gloo, no GPU")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="output directory")
    parser.add_argument("--only", default=",".join(PHASES),
                        help=f"comma-separated phases to run, in this order: {','.join(PHASES)} (a rerun of what failed)")
    args = parser.parse_args(argv)
    gpu = not args.cpu
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "0" if gpu else "1")
    device = ["cluster.gpus_per_node=1", "train.precision=bf16"] if gpu else ["cluster.gpus_per_node=0", "train.precision=bf16"]
    one_rank = [*ONE_RANK, *device]
    phases = {
        "environment": lambda: check_environment(report, gpu),
        "model": lambda: check_model(report, gpu, one_rank),
        # The speed figure first among the jobs: on a lent machine the device time may run out.
        "speed": (lambda: check_speed(report, out, "1node", [*one_rank, *LLAVA_1B], steps=12)) if gpu
        else (lambda: check_speed(report, out, "tiny", one_rank, steps=5)),
        "train": lambda: check_train_and_eval(report, out, one_rank, steps=40 if gpu else 12),
        "parity": lambda: check_parity(report, out, gpu),
    }
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(PHASES))
    if unknown:
        parser.error(f"--only: unknown phase(s) {', '.join(unknown)}; the phases are {', '.join(PHASES)}")
    report = Report()
    summary: dict = {}
    for name in (n for n in PHASES if n in wanted):
        try:
            phases[name]()
        except Exception as exc:  # one phase's crash or timeout must not hide the others' results
            report.check(f"{name} phase", False, f"{type(exc).__name__}: {str(exc)[-1500:]}")
        summary = {"mode": "gpu" if gpu else "cpu", "seconds": round(time.monotonic() - report.start, 1),
                   "failures": report.failures, "checks": report.checks}
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")  # after each phase: partial results survive a kill
    passed = sum(c["ok"] is True for c in report.checks)
    skipped = sum(c["ok"] is None for c in report.checks)
    print(f"gpu_check: {passed}/{len(report.checks)} checks passed, {report.failures} failed, {skipped} skipped in "
          f"{summary['seconds']:.0f} s; {out / 'gpu_check.json'}", flush=True)
    return report.failures


if __name__ == "__main__":
    sys.exit(main())
