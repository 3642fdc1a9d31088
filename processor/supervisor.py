"""`settlement-processor supervise`: run the processor in a child process and start it again when it
dies, with back-off, as Granian respawns a dead worker. A partner's statuses never stay `accepted`
because a process ended.

Exit status 0 (stopped) and 2 (a configuration error: starting again would fail the same way) end
the supervision; anything else (a crash, a signal such as SIGKILL) is restarted after 1 s, doubling
up to 30 s while it keeps dying quickly, back to 1 s once a run lasted a minute. SIGTERM and SIGINT
are passed on to the child, which stops gracefully, and end the supervision.
"""

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

log = logging.getLogger("processor.supervisor")

FIRST_DELAY = 1.0
LONGEST_DELAY = 30.0
HEALTHY_RUN = 60.0  # a run at least this long resets the back-off
FINAL = (0, 2)  # stopped; configuration error


def supervise(command: Sequence[str]) -> int:
    """Run `command` until it ends with a final status or a signal asks us to stop; return its status."""
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    delay = FIRST_DELAY
    while True:
        started = time.monotonic()
        child = subprocess.Popen(list(command))
        log.info("processor started (pid %d)", child.pid)
        status = child.wait()
        if stopping.is_set() or status in FINAL:
            return status if status >= 0 else 128 - status
        if time.monotonic() - started >= HEALTHY_RUN:
            delay = FIRST_DELAY
        log.error("processor (pid %d) ended with status %d; starting it again in %g s", child.pid, status, delay)
        if stopping.wait(delay):
            return 0
        delay = min(delay * 2, LONGEST_DELAY)
