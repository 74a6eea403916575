"""Neutral cost facts (``mimo_toolkit.costs``): one GPU table and one FLOP count for the planner
and the runtime's MFU, exact device names, the fp32 peak that matches what the runtime enables."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mimo_toolkit.costs.devices import DEVICES, device, device_by_cuda_name
from mimo_toolkit.costs.flops import step_flops
from mimo_toolkit.planner.hardware import builtin_machine
from mimo_toolkit.planner.workload import make_problem
from mimo_toolkit.resolve import resolve_job

PACKAGE = Path(__file__).resolve().parents[1] / "mimo_toolkit"
TERA = 1e12


@pytest.mark.parametrize("cuda_name, bf16_tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4),  # SXM
    ("NVIDIA H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0),
])
def test_devices_are_matched_by_their_exact_cuda_name(cuda_name, bf16_tflops):
    assert device_by_cuda_name(cuda_name).peak_flops("bf16", tf32=False) == pytest.approx(bf16_tflops * TERA)


def test_an_unknown_device_gets_no_peak_rather_than_a_neighbours():
    """The old lookup matched "h100" in the name: every H100 got the SXM peak."""
    for name in ("NVIDIA H100", "NVIDIA H100 PCIe 2", "NVIDIA H800", "NVIDIA L40S", "NVIDIA B200"):
        assert device_by_cuda_name(name) is None
    assert len({n for d in DEVICES for n in d.cuda_names}) == sum(len(d.cuda_names) for d in DEVICES)


def test_fp32_peak_follows_tf32():
    """With TF32 off (PyTorch's default, and the runtime does not enable it) fp32 matmuls run
    on the FP32 units: 67 TFLOP/s on an H100 SXM, not the 495 of TF32 tensor cores."""
    sxm = device("H100 SXM")
    assert sxm.peak_flops("fp32", tf32=False) == pytest.approx(66.9 * TERA)
    assert sxm.peak_flops("fp32", tf32=True) == pytest.approx(494.7 * TERA)
    assert sxm.describe_peak("fp32", tf32=False) == "H100 SXM fp32 (TF32 off) 67 TFLOP/s"
    assert device("H100 PCIe").describe_peak("bf16", tf32=False) == "H100 PCIe bf16 dense 756 TFLOP/s"


def test_planner_and_runtime_read_the_same_facts():
    """The planner's machines are the table's devices; its MFU numerator is the runtime's."""
    for kind, name in (("h100", "H100 SXM"), ("h200", "H200 SXM"), ("a100", "A100 SXM 80GB")):
        machine, dev = builtin_machine(kind), device(name)
        assert machine.peak("bf16") == dev.peak_flops("bf16", tf32=False)
        assert machine.peak("fp32") == dev.peak_flops("fp32", tf32=False)
        assert machine.memory_gib == dev.memory_gib
    for preset in ("1node", "tiny"):  # stage-1 freezing, and everything trained
        job = resolve_job("llava", preset).config
        problem = make_problem(job, builtin_machine("h100"), 1, 8)
        assert step_flops(job) == pytest.approx(problem.useful_flops_per_step, rel=1e-12)


def test_runtime_imports_nothing_from_the_planner():
    """Cost facts are neutral: the in-job runtime reads ``costs``, never the planner."""
    offenders = []
    for path in (PACKAGE / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            ours = isinstance(node, ast.ImportFrom) and node.module and (node.level or node.module.startswith("mimo_"))
            if ours and "planner" in node.module.split("."):  # not torch.distributed.checkpoint.planner
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
