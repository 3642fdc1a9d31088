"""Freezing a process for a fault: SIGSTOP, and the wait until it has really stopped."""

import contextlib
import os
import signal
import time
from pathlib import Path


def thread_states(pid: int) -> set[str]:
    """The states (R, S, T, ...) of the threads of `pid`, from /proc; a thread that ends meanwhile (a JVM's
    come and go) is left out."""
    states = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


def stop(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP `pid` and return once every thread of it is stopped (T). kill() returns before the stop has
    reached them all: here 8 of 100 stopped servers were still running right after it, and 4 of them
    answered a request; a test that expects silence from a stopped process must wait for it."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while (states := thread_states(pid)) != {"T"}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} not stopped {timeout:g} s after SIGSTOP: its threads are {sorted(states)}")
        time.sleep(0.001)
