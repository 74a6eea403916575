"""Published figures of the GPUs the toolkit knows: peak throughput per precision, memory.

One table for the planner (a ``--gpu`` kind is one of these devices, with the planner's own
efficiency and network assumptions on top: ``planner.hardware``) and for the runtime's MFU
(``runtime.train.metrics``), which looks a device up by the EXACT name CUDA reports
(``torch.cuda.get_device_name``): an H100 PCIe (756 TFLOP/s) or NVL (835) is not an SXM
(989), and a name not in the table gets no MFU rather than a wrong one.

Figures are NVIDIA's datasheet peaks without sparsity. Three per device, because which one a
run can reach depends on its precision AND on what the runtime enables:

* ``bf16``: dense BF16 tensor-core peak;
* ``tf32``: fp32 matmuls on tensor cores, only when TF32 is enabled
  (``torch.backends.cuda.matmul.allow_tf32``, off by default in PyTorch);
* ``fp32``: plain FP32 (CUDA cores): what an fp32 run gets with TF32 off, as this runtime leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass

TERA = 1e12


@dataclass(frozen=True)
class Device:
    """One GPU model, as its datasheet describes it."""

    name: str
    """Short name used in messages and metrics, e.g. 'H100 SXM'."""
    cuda_names: tuple[str, ...]
    """What ``torch.cuda.get_device_name`` reports for it (exact strings)."""
    bf16_flops: float
    """Dense BF16 tensor-core peak, FLOP/s."""
    tf32_flops: float
    """Dense TF32 tensor-core peak (fp32 matmuls with TF32 enabled), FLOP/s."""
    fp32_flops: float
    """FP32 peak without tensor cores, FLOP/s."""
    memory_gib: float
    """Memory as nvidia-smi reports it."""
    memory_bytes_per_s: float
    """Memory bandwidth."""

    def peak_flops(self, precision: str, tf32: bool) -> float:
        """The peak a run in ``precision`` can reach (``tf32``: TF32 matmuls enabled)."""
        if precision == "bf16":
            return self.bf16_flops
        if precision == "fp32":
            return self.tf32_flops if tf32 else self.fp32_flops
        raise ValueError(f"no peak for precision {precision!r}")

    def describe_peak(self, precision: str, tf32: bool) -> str:
        """E.g. 'H100 PCIe bf16 dense 756 TFLOP/s' (what metrics.jsonl records as ``mfu_peak``)."""
        kind = {"bf16": "bf16 dense", "fp32": "tf32 dense" if tf32 else "fp32 (TF32 off)"}[precision]
        return f"{self.name} {kind} {self.peak_flops(precision, tf32) / TERA:.0f} TFLOP/s"


DEVICES: tuple[Device, ...] = (
    Device("H100 SXM", ("NVIDIA H100 80GB HBM3",), 989.4 * TERA, 494.7 * TERA, 66.9 * TERA, 79.6, 3.35e12),
    Device("H100 PCIe", ("NVIDIA H100 PCIe",), 756.5 * TERA, 378.0 * TERA, 51.2 * TERA, 79.6, 2.0e12),
    Device("H100 NVL", ("NVIDIA H100 NVL",), 835.5 * TERA, 417.5 * TERA, 60.0 * TERA, 93.6, 3.9e12),
    Device("H200 SXM", ("NVIDIA H200",), 989.4 * TERA, 494.7 * TERA, 66.9 * TERA, 140.4, 4.8e12),
    Device("H200 NVL", ("NVIDIA H200 NVL",), 835.5 * TERA, 417.5 * TERA, 60.0 * TERA, 140.4, 4.8e12),
    Device("GH200 96GB", ("NVIDIA GH200 480GB",), 989.4 * TERA, 494.7 * TERA, 66.9 * TERA, 95.0, 4.0e12),
    Device("GH200 144GB", ("NVIDIA GH200 144G HBM3e",), 989.4 * TERA, 494.7 * TERA, 66.9 * TERA, 140.4, 4.9e12),
    Device("A100 SXM 80GB", ("NVIDIA A100-SXM4-80GB",), 312.0 * TERA, 156.0 * TERA, 19.5 * TERA, 80.0, 2.04e12),
    Device("A100 SXM 40GB", ("NVIDIA A100-SXM4-40GB",), 312.0 * TERA, 156.0 * TERA, 19.5 * TERA, 40.0, 1.56e12),
    Device("A100 PCIe 80GB", ("NVIDIA A100 80GB PCIe",), 312.0 * TERA, 156.0 * TERA, 19.5 * TERA, 80.0, 1.94e12),
    Device("A100 PCIe 40GB", ("NVIDIA A100-PCIE-40GB",), 312.0 * TERA, 156.0 * TERA, 19.5 * TERA, 40.0, 1.56e12),
)

_BY_CUDA_NAME = {cuda_name: d for d in DEVICES for cuda_name in d.cuda_names}
_BY_NAME = {d.name: d for d in DEVICES}


def device_by_cuda_name(cuda_name: str) -> Device | None:
    """The device CUDA reports as ``cuda_name`` (exact match), or None when unknown."""
    return _BY_CUDA_NAME.get(cuda_name.strip())


def device(name: str) -> Device:
    """A device by its short name ('H100 SXM')."""
    return _BY_NAME[name]
