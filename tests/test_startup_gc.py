"""The job's start-up takes the imported objects out of the garbage collector's scans
(``train.freeze_startup_objects``), so a full collection during the model build or a
training step walks only what the job created, not the ~430k objects torch and
megatron-core import."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import gc, json, time
from mimo_toolkit.runtime.train.trainer import Trainer  # the job's imports (train.py)
from mimo_toolkit.train import freeze_startup_objects

def full_collection():
    start = time.perf_counter()
    gc.collect()
    return time.perf_counter() - start

before = min(full_collection() for _ in range(3))
freeze_startup_objects()
after = min(full_collection() for _ in range(3))
print(json.dumps({"before": before, "after": after, "frozen": gc.get_freeze_count()}))
"""


def test_a_full_collection_after_start_up_skips_the_imported_objects():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["frozen"] > 100_000, result  # torch + megatron-core alone are several hundred thousand
    assert result["after"] < result["before"] / 5, result  # measured: 0.21 s -> under 0.01 s
