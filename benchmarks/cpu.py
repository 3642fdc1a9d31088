"""CPU time from /proc: what each process of the stack spends while a load runs (issue 25).

A `StackMeter` names the processes that do the work (the server's workers, Redis, the Kafka broker,
PostgreSQL, the processor), each as the roots of a process tree. `measure()` reads them before and
after a load and gives each part's CPU seconds (user + system), the load generator apart (the children
this process reaped meanwhile, i.e. wrk). Divided by the answers the load produced, that is the
whole stack's CPU per transaction: the figure a capacity plan needs, and one that moves far less from
day to day on a shared machine than throughput does.

A tree's time is, for every live process in it, utime + stime + cutime + cstime: a descendant that
exited and was reaped lands in its parent's cutime/cstime, so the sum is continuous while backends or
workers come and go.
"""

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

TICKS = os.sysconf("SC_CLK_TCK")
LISTEN = "0A"  # /proc/net/tcp's state of a listening socket


def process_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads) and of its reaped children, in seconds; 0 when
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime (fields 14-17)


def descendants(pid: int) -> list[int]:
    """The process and every live process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


def tree_seconds(pid: int) -> float:
    return sum(process_seconds(p) for p in descendants(pid))


def listener_pids(port: int) -> list[int]:
    """The processes holding a listening TCP socket on `port` (any address), found through the socket's
    inode in /proc/net/tcp{,6} and the processes' open files; the lowest first."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                columns = line.split()
                if columns[3] == LISTEN and int(columns[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{columns[9]}]")
    pids = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        pids.add(int(fd_dir.parent.name))
                        break
    return sorted(pids)


def _ports(addresses: str, default: int) -> list[int]:
    """Ports of a comma-separated host:port list or of a URL whose host part is one."""
    hosts = urlsplit(addresses).netloc.rpartition("@")[2] if "://" in addresses else addresses
    return [int(h.rpartition(":")[2] or default) for h in hosts.split(",") if h.strip()]


def roots_of(addresses: str, default_port: int) -> list[int]:
    """The process roots serving these addresses (one per port: a cluster's nodes)."""
    roots = []
    for port in _ports(addresses, default_port):
        pids = listener_pids(port)
        if pids:
            roots.append(pids[0])
    return roots


@dataclass
class StackMeter:
    """The parts of the stack by name, each as process roots whose trees are summed."""

    parts: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of_stack(cls, redis_url: str, kafka_bootstrap: str, database_url: str | None = None) -> "StackMeter":
        parts = {"redis": roots_of(redis_url, 6379), "kafka": roots_of(kafka_bootstrap, 9092)}
        if database_url:
            parts["postgres"] = roots_of(database_url, 5432)
        return cls({name: pids for name, pids in parts.items() if pids})

    def with_part(self, name: str, *pids: int) -> "StackMeter":
        return StackMeter({name: list(pids), **self.parts})

    def read(self) -> dict[str, float]:
        return {name: sum(tree_seconds(p) for p in pids) for name, pids in self.parts.items()}

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """CPU seconds per part over the block, and `load`: the children this process reaped meanwhile."""
        used: dict[str, float] = {}
        before, load_before = self.read(), _children_seconds()
        yield used
        after, load_after = self.read(), _children_seconds()
        used.update({name: after[name] - before[name] for name in before})
        used["load"] = load_after - load_before


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_answer_us(used: dict[str, float], answers: int) -> dict[str, float]:
    """Each part's CPU per answer in µs, `stack` (everything but the load generator) and what the stack
    would answer per second on two cores of its own (`two_core_capacity`)."""
    answers = max(answers, 1)
    cost = {name: round(seconds * 1e6 / answers, 1) for name, seconds in used.items()}
    cost["stack"] = round(sum(v for k, v in cost.items() if k != "load"), 1)
    cost["two_core_capacity"] = round(2e6 / cost["stack"]) if cost["stack"] else 0
    return cost
