"""Eager megatron-core on CPU (``runtime/eager.py``): the compiler and wandb are not imported
at start-up, yet everything that uses them still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from mimo_toolkit.runtime.eager import run_eagerly
    run_eagerly()
    import mimo_toolkit.runtime.train.trainer  # what every rank of a job imports
    import megatron.core.jit
    loaded = {m: m in sys.modules for m in ("torch._dynamo", "torch._inductor", "wandb.sdk")}
    fuser = megatron.core.jit.jit_fuser.__name__
    import wandb
    usable = callable(wandb.init) and "wandb.sdk" in sys.modules  # the first attribute loads it
    print(json.dumps({"loaded": loaded, "fuser": fuser, "wandb_usable": usable}))
""")


def probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_COMPILE_DISABLE"}
    if env_value is not None:
        env["TORCH_COMPILE_DISABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_runtime_starts_without_the_compiler_and_wandb_still_works():
    got = probe(None)
    assert got["loaded"] == {"torch._dynamo": False, "torch._inductor": False, "wandb.sdk": False}
    assert got["fuser"] == "noop_decorator"
    assert got["wandb_usable"]


def test_compilation_asked_for_keeps_megatrons_torch_compile():
    got = probe("0")
    assert got["fuser"] == "compile" and got["loaded"]["torch._dynamo"]
