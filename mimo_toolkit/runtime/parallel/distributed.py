"""Process-group setup, and failure handling that ends every rank quickly.

Failure board: every rank heartbeats into torchrun's rendezvous store (a second client
connection to ``MASTER_ADDR:MASTER_PORT``) and a watchdog thread polls it. When a rank
fails it records its exception there before exiting; a rank that dies without a word (a
kill) stops heartbeating. Either way every other rank's watchdog notices within a few
seconds and exits with :data:`EXIT_PEER_FAILED`, even while its main thread is stuck in a
collective; rank 0 first says which rank failed first and why, and writes it to
``exit_status.json``. Communication errors are symptoms, never named as the cause when a
real failure or a silent rank explains them.

Two clocks, on purpose: the world group's collective timeout (``train.timeout_s``, minutes:
a checkpoint barrier may wait on a slow synchronous save) and the board's (seconds: a dead
rank is named long before any collective would time out).

Shutdown is ordered (:func:`shutdown`): the watchdog thread is stopped AND joined before the
interpreter exits. A daemon thread still inside a store call at exit is killed by the
interpreter's teardown mid-C++ (``pthread_exit`` unwinding through a ``noexcept`` frame):
SIGABRT, "terminate called without an active exception", after a run that completed.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ...run_dir import EXIT_PEER_FAILED, RunDir, StopRequest, write_json_atomic

HEARTBEAT_S = 1.0
STALE_AFTER_S = 10.0
#: The board's own store operations are small; a store that does not answer within this
#: means its host (rank 0's torchrun agent) is gone. Independent of the collective timeout.
STORE_TIMEOUT_S = 30.0
#: How long a clean shutdown waits for the watchdog to leave its current store call.
JOIN_TIMEOUT_S = STORE_TIMEOUT_S + 5.0
#: What a store call raises when its host is unreachable or a key times out.
STORE_ERRORS = (dist.DistError, ConnectionError, TimeoutError)
_COMM_ERRORS = ("Connection closed", "Connection reset", "Broken pipe", "timed out", "Timed out", "NCCL", "peer")


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    stop: StopRequest = field(default_factory=StopRequest)
    timeout: datetime.timedelta | None = None
    """Every collective's limit (``train.timeout_s``); pass it to each group created later."""

    @property
    def stop_requested(self) -> threading.Event:
        return self.stop.event

    @property
    def stop_signal(self) -> str:
        return self.stop.signal


def init_distributed(timeout_s: int, want_gpu: bool, stop: StopRequest | None = None) -> DistContext:
    """Join the job's process group: NCCL on GPUs when the job asks for them, gloo otherwise.

    ``timeout_s`` is every collective's limit (``train.timeout_s``); subgroups inherit it."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_gpu = want_gpu and torch.cuda.is_available()
    if use_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_gpu else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if use_gpu else None,
        )
    return DistContext(rank, world, local_rank, device, backend, stop or StopRequest(),
                       datetime.timedelta(seconds=timeout_s))


def is_comm_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(s in text for s in _COMM_ERRORS)


class LocalBoard:
    """A single process outside torchrun: nobody to tell, nothing to watch."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.rank = 0

    def start(self) -> None: ...

    def finish(self) -> bool:
        return True

    def record(self, exc: BaseException, step: int | None) -> None:
        write_json_atomic(self.run_dir.failure_file(0), {"rank": 0, "time": time.time(), "step": step,
                                                         "error": f"{type(exc).__name__}: {exc}"})

    def abort(self, why: str, code: int = EXIT_PEER_FAILED) -> None:
        self.run_dir.write_exit_status("failed", first_failed_rank=0, message=why)


def failure_board(rank: int, world: int, run_dir: RunDir, timeout_s: int):
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return LocalBoard(run_dir)
    return FailureBoard(rank, world, run_dir, timeout_s)


class FailureBoard:
    """Heartbeats and failure reports in the rendezvous store, watched by a daemon thread."""

    def __init__(self, rank: int, world: int, run_dir: RunDir, timeout_s: int) -> None:
        self.rank = rank
        self.world = world
        self.run_dir = run_dir
        self.store = dist.TCPStore(
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(os.environ.get("MASTER_PORT", "29500")),
            is_master=False,
            timeout=datetime.timedelta(seconds=min(STORE_TIMEOUT_S, timeout_s)),
            wait_for_workers=False,
        )
        self.prefix = f"mimo/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.time()
        self._register_grace = float(timeout_s)

    # ---- heartbeat / watchdog ---------------------------------------------------------------
    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="mimo-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Stop the watchdog and wait for its thread to end; False if it did not end in time
        (stuck in a store call whose host is gone)."""
        self._stop.set()
        if self._thread is None or self._thread is threading.current_thread():
            return True
        self._thread.join(JOIN_TIMEOUT_S)
        return not self._thread.is_alive()

    def _beat(self) -> None:
        self.store.set(f"{self.prefix}/hb/{self.rank}", str(time.time()))

    def _watch(self) -> None:
        try:
            self._poll_until_stopped()
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave this rank unwatched
            _say(f"the failure-board watchdog crashed ({type(exc).__name__}: {exc}); ending this rank")
            self.abort(f"rank {self.rank}'s watchdog crashed")

    def _poll_until_stopped(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
                failed = int(self.store.add(f"{self.prefix}/failures", 0))
                stale = self.silent_ranks()
            except STORE_ERRORS as exc:  # the store's host (rank 0's node agent) is gone
                _say(f"the rendezvous store does not answer ({type(exc).__name__}: {exc})")
                failed, stale = 1, []
            if failed or stale:
                if self._stop.is_set():
                    return
                self.abort(f"a peer failed (stale: {stale})" if stale else "a peer failed")

    def silent_ranks(self) -> list[int]:
        """Ranks that stopped heartbeating (or never started within the timeout) and did not
        finish cleanly."""
        now = time.time()
        silent = []
        for r in range(self.world):
            if self._has(f"done/{r}"):
                continue
            if self._has(f"hb/{r}"):
                if now - float(self.store.get(f"{self.prefix}/hb/{r}").decode()) > STALE_AFTER_S:
                    silent.append(r)
            elif now - self._started > self._register_grace:
                silent.append(r)
        return silent

    def finish(self) -> bool:
        """This rank is leaving cleanly (completed or preempted): it is not a silent failure.
        Returns whether the watchdog thread ended (see :meth:`stop`)."""
        try:
            self.store.set(f"{self.prefix}/done/{self.rank}", "1")
        except STORE_ERRORS as exc:  # finished anyway; peers may call this rank silent
            _say(f"could not mark this rank as done in the rendezvous store ({type(exc).__name__}: {exc})")
        return self.stop()

    def _has(self, key: str) -> bool:
        return self.store.check([f"{self.prefix}/{key}"])

    # ---- failures ---------------------------------------------------------------------------
    def record(self, exc: BaseException, step: int | None) -> None:
        """This rank failed: tell the board (and the run dir) before exiting."""
        info = {
            "rank": self.rank,
            "host": socket.gethostname(),
            "time": time.time(),
            "step": step,
            "error": f"{type(exc).__name__}: {exc}".strip()[:2000],
            "comm_error": is_comm_error(exc),
            "traceback": "".join(traceback.format_exception(exc))[-20000:],
        }
        try:
            write_json_atomic(self.run_dir.failure_file(self.rank), info)
        except OSError as exc:
            _say(f"could not write {self.run_dir.failure_file(self.rank)}: {exc}")
        try:
            self.store.set(f"{self.prefix}/failure/{self.rank}", json.dumps(info))
            self.store.add(f"{self.prefix}/failures", 1)
        except STORE_ERRORS as exc:  # the peers still notice: this rank stops heartbeating
            _say(f"could not report the failure to the rendezvous store ({type(exc).__name__}: {exc})")

    def _reports(self) -> list[dict]:
        reports = []
        for r in range(self.world):
            try:
                if self._has(f"failure/{r}"):
                    reports.append(json.loads(self.store.get(f"{self.prefix}/failure/{r}").decode()))
            except ValueError as exc:  # a report cut short (JSONDecodeError, bad UTF-8)
                _say(f"rank {r}'s failure report is unreadable: {exc}")
        return sorted(reports, key=lambda f: f["time"])

    def _vanished(self, reported: set[int]) -> list[int]:
        """Ranks that neither finished, reported a failure, nor aborted because of a peer,
        and whose heartbeat stopped: they died without a word (e.g. killed)."""
        now = time.time()
        out = []
        for r in range(self.world):
            if r == self.rank or r in reported or self._has(f"done/{r}") or self._has(f"aborted/{r}"):
                continue
            if not self._has(f"hb/{r}"):
                continue
            if now - float(self.store.get(f"{self.prefix}/hb/{r}").decode()) > 2.5 * HEARTBEAT_S:
                out.append(r)
        return out

    def first_failure(self, wait_s: float = 8.0) -> dict:
        """The root cause: the earliest real (non-communication) failure, else a rank that
        vanished (killed), else the earliest communication failure. Waits a few seconds for
        a vanished rank's heartbeat to go stale."""
        deadline = time.time() + wait_s
        reports: list[dict] = []
        while True:
            try:
                reports = self._reports()
                real = [f for f in reports if not f["comm_error"]]
                if real:
                    return real[0]
                vanished = self._vanished({f["rank"] for f in reports})
                if vanished:
                    return {"rank": vanished[0], "error": "the process died without a report (killed or crashed)",
                            "comm_error": False}
            except STORE_ERRORS as exc:
                _say(f"the rendezvous store stopped answering while looking for the first failure ({exc})")
                break
            if time.time() > deadline:
                break
            time.sleep(0.5)
        return reports[0] if reports else {"rank": self.rank, "error": "unknown failure", "comm_error": True}

    def abort(self, why: str, code: int = EXIT_PEER_FAILED) -> None:
        """End this rank now (from any thread) with ``code``. Rank 0 (or, if rank 0 is the one
        that failed, every rank) first reports which rank failed first and why."""
        self._stop.set()
        try:
            self.store.set(f"{self.prefix}/aborted/{self.rank}", why)
        except STORE_ERRORS as exc:
            _say(f"could not mark this rank as aborted in the rendezvous store ({exc})")
        try:
            first = self.first_failure()
        except Exception as exc:  # noqa: BLE001 - abort must reach os._exit whatever happens
            _say(f"could not determine the first failure ({type(exc).__name__}: {exc})")
            first = {"rank": self.rank, "error": why}
        if self.rank == 0 or first["rank"] == 0:
            msg = f"rank {first['rank']} failed first: {first['error']}"
            print(f"[mimo-toolkit] {msg}", file=sys.stderr, flush=True)
            try:
                self.run_dir.write_exit_status("failed", first_failed_rank=first["rank"], message=first["error"])
            except OSError as exc:
                _say(f"could not write {self.run_dir.exit_status_file}: {exc}")
        sys.stderr.flush()
        os._exit(code)


def _say(message: str) -> None:
    """Failure handling never hides what went wrong in it: one line on this rank's stderr."""
    print(f"[mimo-toolkit] {message}", file=sys.stderr, flush=True)


def shutdown(board, code: int) -> int:
    """Leave in order after a clean end (completed or preempted): mark this rank done and
    join the watchdog, then destroy the process groups (pending p2p work was waited for at
    the end of each step), then return ``code`` for a normal interpreter exit.

    If the watchdog cannot be joined (its store call hangs: the store's host is gone), the
    interpreter must not tear down around it: flush and ``os._exit`` with the same code."""
    joined = board.finish()
    if dist.is_initialized():
        dist.destroy_process_group()
    if not joined:
        _say(f"the failure-board watchdog did not stop within {JOIN_TIMEOUT_S:.0f} s; exiting without teardown")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
