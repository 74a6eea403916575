"""Peak memory of this rank since its model started being built (what the planner predicts).

* GPU: the caching allocator's statistics (``max_memory_allocated``, reset when the probe
  starts): bytes of tensors, not the allocator's reserve.
* CPU: the growth of the process's peak resident set (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` when the probe starts) over its resident set at that moment, so
  the interpreter, torch and megatron-core themselves are not counted. glibc serves large
  tensors from their own mmap and returns them on free, so the resident set follows live
  tensors closely; small allocations and the allocator's arenas add a little.

Elsewhere (no ``/proc``) the probe reports None.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``, ``RssAnon``, ...) in KiB;
    None where there is no such file or field."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match[1]) if match else None


class MemoryProbe:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
            return
        self.base = status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            self.base = None

    def peak_bytes(self) -> int | None:
        """Peak bytes above the starting point, so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        peak = status_kib("VmHWM")
        return None if self.base is None or peak is None else (peak - self.base) * 1024
