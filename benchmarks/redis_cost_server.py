"""The Redis of issue 23's measurement (benchmarks/redis_cost.py): a redis-server of the run's own, and
what it did while a load ran: its commandstats, its CPU time, the memory it kept and a sample of its keys."""

import contextlib
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.cpu import process_seconds as cpu_seconds
from benchmarks.redis_cost_stats import OWN_COMMANDS, base_command, key_family, parse_commandstats, parse_info, per
from tests.servers import free_port

QUIET_SECONDS = 0.5  # the gateway's commands have stopped when none came for this long


def schedstat_seconds(pid: int) -> float:
    """Time on a CPU of every thread of a process, in nanoseconds' resolution (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class RedisServer:
    """A redis-server of this run: a free port, no persistence, an empty dataset; stopped by `stop`."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (deploy/redis.sh installs it from apt)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += [
            "--daemonize",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / f"redis-{self.port}.log"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = redis.Redis(port=self.port, socket_timeout=60)
        self.client.set_response_callback("INFO", lambda response, **_: response)  # the raw text: parse_info
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"redis-server on {self.port} did not start") from None
                time.sleep(0.05)

    def info(self, section: str) -> str:
        return bytes(self.client.execute_command("INFO", section)).decode()

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Window:
    """What Redis did between CONFIG RESETSTAT and the moment the gateway's commands stopped."""

    stats: dict[str, dict[str, float]]
    cpu_seconds: float
    schedstat_seconds: float
    used_memory: int  # after minus before
    seconds: float
    gateway_cpu_seconds: float = 0.0  # the gateway's processes (Granian's and its workers'), same window


def measured(
    server: RedisServer,
    load: Callable[[], Counter[str]],
    gateway: list[int] = (),  # type: ignore[assignment]
) -> tuple[Window, Counter[str]]:
    """Run `load` between CONFIG RESETSTAT and the end of the gateway's commands (the completions it sends
    after answering included): the window's commandstats, CPU time and used_memory growth, and the CPU
    time of the `gateway` processes over the same window."""
    pid = server.process.pid
    server.client.config_resetstat()
    memory = int(parse_info(server.info("memory"))["used_memory"])
    gateway_cpu = sum(cpu_seconds(p) for p in gateway)
    cpu, sched, started = cpu_seconds(pid), schedstat_seconds(pid), time.monotonic()
    counts = load()
    last, since, deadline = -1.0, 0.0, time.monotonic() + 120
    while True:  # until no command of the gateway's came for QUIET_SECONDS
        stats = parse_commandstats(server.info("commandstats"))
        now_cpu, now_sched, now = cpu_seconds(pid), schedstat_seconds(pid), time.monotonic()
        now_gateway = sum(cpu_seconds(p) for p in gateway)
        total = sum(v.get("calls", 0.0) for k, v in stats.items() if base_command(k) not in OWN_COMMANDS)
        if total != last:
            last, since, at = total, now, (stats, now_cpu, now_sched, now, now_gateway)
        elif now - since >= QUIET_SECONDS or now > deadline:
            break
        time.sleep(0.05)
    stats, end_cpu, end_sched, ended, end_gateway = at
    grown = int(parse_info(server.info("memory"))["used_memory"]) - memory
    window = Window(stats, end_cpu - cpu, end_sched - sched, grown, ended - started, end_gateway - gateway_cpu)
    return window, counts


def memory_split(stats: dict[str, Any], transactions: int) -> dict[str, float | None]:
    """MEMORY STATS per transaction, where used_memory goes: the dataset (keys and values as allocated) and
    the hash tables of keys and of expiry times (entries and buckets), which MEMORY USAGE leaves out."""
    tables = stats.get("db.0", {})
    return {
        "dataset": per(stats.get("dataset.bytes", 0), transactions, 1),
        "hashtable_main": per(tables.get("overhead.hashtable.main", 0), transactions, 1),
        "hashtable_expires": per(tables.get("overhead.hashtable.expires", 0), transactions, 1),
    }


def memory_sample(server: RedisServer, size: int, rng: random.Random) -> dict[str, tuple[int, list[int]]]:
    """Every key (SCAN) and MEMORY USAGE (SAMPLES 0) of a random sample of `size` of them, by key family:
    {family: (its keys, the sampled ones' bytes)}."""
    keys = [k.decode() for k in server.client.scan_iter(count=1000)]
    sample = rng.sample(keys, min(size, len(keys)))
    pipe = server.client.pipeline(transaction=False)
    for key in sample:
        pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
    sizes: dict[str, list[int]] = {}
    for key, used in zip(sample, pipe.execute(), strict=True):
        sizes.setdefault(key_family(key), []).append(int(used or 0))
    return {family: (count, sizes.get(family, [])) for family, count in Counter(map(key_family, keys)).items()}
