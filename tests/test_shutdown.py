"""A completed run exits cleanly: no native thread is left inside a C++ call at interpreter exit.

The failure board's watchdog thread polls the rendezvous store. If the interpreter exits while
that (daemon) thread is inside a store call, the thread is torn down mid-C++ and the process
dies with SIGABRT ("terminate called without an active exception") after a run that completed
(seen once in 213 tests, in test_fan_out_vision_dp1_llm_dp2). ``shutdown`` joins the
watchdog first. Here the watchdog polls without pause, so it is almost always inside a store
call when the process exits: without the join, most such runs abort (6 of 6 measured with this script).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

CLEAN_EXIT = """
import os, sys, tempfile, time
import torch.distributed as dist
from mimo_toolkit.run_dir import RunDir
from mimo_toolkit.runtime.parallel import distributed

master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(master.port)
distributed.HEARTBEAT_S = 0.0  # with 1000 ranks to poll, the watchdog is always inside a store call
board = distributed.FailureBoard(0, 1000, RunDir(tempfile.mkdtemp()), timeout_s=600)
board.start()
time.sleep(0.2)
sys.exit(distributed.shutdown(board, 0))
"""


def test_shutdown_joins_the_watchdog_before_the_interpreter_exits():
    codes = []
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", CLEAN_EXIT], capture_output=True, text=True, timeout=120)
        assert "terminate called" not in proc.stderr, proc.stderr[-2000:]
        codes.append(proc.returncode)
    assert codes == [0] * 3
