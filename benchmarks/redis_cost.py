"""Issue 23: what one accepted transaction costs Redis, before and after, single and bulk, in one run.

    .venv/bin/python -m benchmarks.redis_cost [--rounds 3] [--transactions 100000] [--single-transactions N]
        [--replays 10000] [--before 0304ead] [--after PATH] [--sample 5000] [--json PATH] [--targets FILE]

Two checkouts of the gateway: "before", a git worktree of `--before` (a commit, made here and removed at
the end; the compiled fastcore extension, which git does not hold, is copied in when fastcore's source is
the same at that commit, else both run fastcore in pure Python and the report says so), and "after", the
working tree. Rounds alternate their order (before, after; after, before; ...) and the medians over the
rounds are reported. Each checkout, each round, gets a Redis of its own (a `redis-server` on a free port,
no persistence, started empty and stopped after) and a gateway of its own (Granian, one worker per core,
open mode, with that checkout on PYTHONPATH and as Granian's working directory, a partner of its own, the
run's own topics on the local Kafka, removed at the end). After a warm-up and a FLUSHALL, per mode:

  single  `--single-transactions` (default `--transactions`) new seed-shaped transactions (the README's
          curl body, made unique) POSTed to /api/v1/transactions/ over CONCURRENCY keep-alive connections
  bulk    `--transactions` of them through /api/v1/transactions/bulk in requests of 500
  replay  then the same transactions again, the same way (single: the first `--replays`): what a
          replay costs (answered 200)

Around each load: CONFIG RESETSTAT, then, once the gateway's commands have stopped (the completions are
sent after the answers), INFO commandstats, the server's CPU time from /proc/<pid>/stat (utime + stime,
and schedstat, finer, as a cross-check) and INFO memory's used_memory; then SCAN and MEMORY USAGE over a
random sample of `--sample` keys, scaled to every key. All of it divided by the transactions answered 202
(replays: by those answered 200). FLUSHALL before each mode, so the keys counted are that mode's alone.

  commands            every call INFO commandstats counts, the ones scripts make included (this run's
                      own INFO, CONFIG, MEMORY, SCAN, FLUSHALL, CLIENT, DBSIZE left out)
  commandstats µs     the usec INFO commandstats gives the commands the gateway sent (a script's usec
                      includes the commands it ran, which are not counted twice: a command named in a
                      `redis.call` of the checkout's Lua is taken as run by a script). Redis times a
                      command by the clock, not by CPU: on a shared machine a command's usec includes
                      the time Redis was preempted during it (here 0.6 s of CPU read as 1 to 3.6 s), so
                      this row is reported and not gated
  server CPU µs       the Redis process's CPU time: commands, parsing, networking, its timers; the CPU
                      target is judged on it
  used_memory bytes   used_memory after minus before (dataset, hash tables, expiry table)
  MEMORY USAGE bytes  the sampled keys' MEMORY USAGE (SAMPLES 0), per key, times the keys there are

The report goes to --json (default benchmarks/results/redis-cost-<UTC stamp>.json), with a Markdown
table beside it (.md, printed too): before | after | after/before | target | verdict per metric and mode.
Targets are [redis_cost] of benchmarks/targets.toml, judged on "after"; a miss says what was measured.
Exit status 0 when every target is met, 1 otherwise. Needs the local stack's Kafka (GATEWAY_* variables,
`deploy/stack.sh env`) and `redis-server`. `make bench` runs it as a phase (benchmarks/run.py).
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import redis

from benchmarks.cpu import process_seconds as cpu_seconds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BEFORE = "0304ead"  # issue 23's starting point
BULK_SIZE = 500
CONCURRENCY = 64  # keep-alive connections of the single load
BULK_CONCURRENCY = 4  # bulk requests in flight at once
WARMUP = 200  # transactions, through each endpoint, before the first FLUSHALL
QUIET_SECONDS = 0.5  # the gateway's commands have stopped when none came for this long
# the run's own commands, left out of every count
OWN_COMMANDS = frozenset({"info", "config", "memory", "scan", "flushall", "dbsize", "client", "hello", "select"})
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
# the seed transaction of the README's quick start, its ids made unique
SEED = (
    '{{"transaction_id":"txn_{u}","amount":250.00,"source_currency":"USD","destination_currency":"GBP",'
    '"source_account":"acct_usa_{u}","destination_account":"acct_uk_99","counterparty_id":"cparty_london",'
    '"idempotency_key":"idem_{u}","settlement_window":"t1"}}'
)


# -- pure parts -----------------------------------------------------------------------------------


def parse_info(text: str) -> dict[str, str]:
    """An INFO reply's `name:value` lines."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


def parse_commandstats(text: str) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec, ...}}: `cmdstat_config|resetstat:calls=1,usec=31,...`
    gives `config|resetstat`."""
    stats: dict[str, dict[str, float]] = {}
    for name, value in parse_info(text).items():
        if name.startswith("cmdstat_"):
            pairs = (item.partition("=") for item in value.split(","))
            stats[name.removeprefix("cmdstat_")] = {k: float(v) for k, _, v in pairs if v}
    return stats


def base_command(name: str) -> str:
    """`config|resetstat` -> `config`."""
    return name.partition("|")[0].lower()


def scripted_commands(lua_sources: list[str]) -> set[str]:
    """The commands Lua code runs (`redis.call('HSET', ...)`, `redis.pcall("get", ...)`), lower case."""
    names: set[str] = set()
    for source in lua_sources:
        names.update(m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z_]+)['\"]", source))
    return names


def command_cost(stats: dict[str, dict[str, float]], scripted: set[str]) -> dict[str, Any]:
    """What the gateway's commands cost, from INFO commandstats since CONFIG RESETSTAT: every call
    (those inside scripts too), the script calls, the calls sent (scripts and direct commands), and the
    usec of the calls sent (a script's usec includes what it ran: the commands in `scripted` are not
    added again), each per command too."""
    calls: dict[str, float] = {}
    usec = 0.0
    sent = 0.0
    for name, values in stats.items():
        base = base_command(name)
        if base in OWN_COMMANDS:
            continue
        calls[name] = values.get("calls", 0.0)
        if base in SCRIPT_COMMANDS or base not in scripted:
            usec += values.get("usec", 0.0)
            sent += values.get("calls", 0.0)
    scripts = sum(n for name, n in calls.items() if base_command(name) in SCRIPT_COMMANDS)
    return {"commands": sum(calls.values()), "scripts": scripts, "sent": sent, "usec": usec, "by_command": calls}


def per(value: float, count: int, digits: int = 3) -> float | None:
    """`value` per one of `count` (None when there were none)."""
    return round(value / count, digits) if count > 0 else None


def scaled_sample(sample_bytes: list[int], keys: int, transactions: int) -> float | None:
    """Bytes per transaction from a sample of the keys' MEMORY USAGE: mean per key, times the keys there are."""
    if not sample_bytes or transactions <= 0:
        return None
    return round(statistics.fmean(sample_bytes) * keys / transactions, 1)


def key_family(key: str) -> str:
    """`idem:{partner}:abc` -> `idem`: what a key is for, from its prefix."""
    return key.partition(":")[0] if ":" in key else "(other)"


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over `results` (dicts of the same shape, nested); a number missing from
    some of them counts as 0 there (a command one round did not send), None where none has it."""
    keys: list[str] = []
    for result in results:
        keys += [k for k in result if k not in keys]
    merged: dict[str, Any] = {}
    for key in keys:
        values = [r.get(key) for r in results]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            merged[key] = median_of(present)
        elif present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            numbers = [v if v is not None else 0 for v in values]
            merged[key] = round(statistics.median(numbers), 3)
        else:
            merged[key] = present[0] if present else None
    return merged


@dataclass(frozen=True)
class Metric:
    key: str  # in a mode's result
    label: str
    unit: str
    target: str | None  # the [redis_cost] entry limiting it
    modes: tuple[str, ...]  # where the target applies


METRICS = (
    Metric("commands_per_txn", "Redis commands / new transaction", "commands", "max_commands_bulk", ("bulk",)),
    Metric("commandstats_us_per_txn", "Redis µs / new transaction (commandstats, wall clock)", "µs", None, ()),
    Metric("cpu_us_per_txn", "Redis CPU µs / new transaction (server)", "µs", "max_cpu_us_bulk", ("bulk",)),
    Metric("gateway_cpu_us_per_txn", "gateway CPU µs / new transaction (its processes)", "µs", None, ()),
    Metric("used_memory_bytes_per_txn", "bytes kept / transaction (used_memory)", "bytes", "max_bytes",
           ("single", "bulk")),
    Metric("memory_usage_bytes_per_txn", "bytes kept / transaction (MEMORY USAGE)", "bytes", "max_bytes",
           ("single", "bulk")),
    Metric("replay_commands_per_replay", "Redis commands / replay", "commands", None, ()),
    Metric("replay_cpu_us_per_replay", "Redis CPU µs / replay (server)", "µs", None, ()),
    Metric("replay_gateway_cpu_us_per_replay", "gateway CPU µs / replay (its processes)", "µs", None, ()),
)  # fmt: skip
MODES = ("single", "bulk")


def verdict(measured: float | None, limit: float | None, unit: str) -> tuple[bool | None, str]:
    """(passed, what to say): None when nothing limits the metric; a miss says what was measured."""
    if limit is None:
        return None, ""
    if measured is None:
        return False, f"not measured (target at most {limit:g} {unit})"
    if measured <= limit:
        return True, f"{measured:g} <= {limit:g} {unit}"
    return False, f"{measured:g} {unit} per transaction, target at most {limit:g} {unit}"


def rows(medians: dict[str, dict[str, dict[str, Any]]], targets: dict[str, float]) -> list[dict[str, Any]]:
    """One row per metric and mode: before, after, after/before, the target and the verdict on "after"."""
    table = []
    for metric in METRICS:
        for mode in MODES:
            before = medians.get("before", {}).get(mode, {}).get(metric.key)
            after = medians.get("after", {}).get(mode, {}).get(metric.key)
            limit = targets.get(metric.target) if metric.target and mode in metric.modes else None
            passed, reason = verdict(after, limit, metric.unit)
            ratio = round(after / before, 3) if before and after is not None else None
            table.append(
                {
                    "metric": metric.label, "key": metric.key, "mode": mode, "unit": metric.unit,
                    "before": before, "after": after, "ratio": ratio, "limit": limit, "passed": passed,
                    "reason": reason,
                }
            )  # fmt: skip
    return table


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| metric | mode | before | after | after/before | target | verdict |", "|---|---|--:|--:|--:|--:|---|"]
    for row in table:
        limit = f"<= {row['limit']:g}" if row["limit"] is not None else "-"
        judged = {True: "met", False: f"MISS: {row['reason']}", None: "-"}[row["passed"]]
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "-"
        lines.append(
            f"| {row['metric']} | {row['mode']} | {_cell(row['before'])} | {_cell(row['after'])} | {ratio} | {limit}"
            f" | {judged} |"
        )
    return "\n".join(lines)


def breakdown(medians: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Per mode and checkout: the calls per transaction by command and the bytes per transaction by key
    family, the medians, one line each."""
    lines = []
    for mode in MODES:
        for label in ("before", "after"):
            result = medians.get(label, {}).get(mode)
            if not result:
                continue
            calls = sorted(result.get("calls_per_txn", {}).items(), key=lambda item: -item[1])
            keys = result.get("by_key", {})
            lines.append(
                f"- {mode}, {label}: calls/txn "
                + (", ".join(f"{name} {n:g}" for name, n in calls if n) or "-")
                + "; bytes/txn by key "
                + (", ".join(f"{name} {v['bytes_per_txn']:g} ({v['keys_per_txn']:g} keys)" for name, v in keys.items())
                   or "-")
                + "".join(f"; MEMORY STATS bytes/txn: dataset {split['dataset']:g}, key table "
                          f"{split['hashtable_main']:g}, expiry table {split['hashtable_expires']:g}"
                          for split in [result.get("memory_stats_per_txn")] if split)
            )  # fmt: skip
    return "\n".join(lines)


def seed_bodies(tag: str, count: int) -> list[bytes]:
    """`count` seed-shaped transactions whose ids carry `tag` (12 hex digits of id in all, as the tests')."""
    return [SEED.format(u=f"{tag}{i:08x}").encode() for i in range(count)]


def bulk_bodies(bodies: list[bytes], size: int = BULK_SIZE) -> list[bytes]:
    return [b"[" + b",".join(bodies[i : i + size]) + b"]" for i in range(0, len(bodies), size)]


def outcomes(status: int, payload: bytes, items: int) -> Counter[str]:
    """What one answer says happened to its transactions: {status: count}; a bulk 207 per item, a bulk 200
    (every one accepted) as 202s, any other bulk answer as `request <status>` for each of its items."""
    if items == 0:  # the single endpoint
        return Counter({str(status): 1})
    if status == 200:
        return Counter({"202": items})
    if status == 207:
        results = msgspec.json.decode(payload)["results"]
        return Counter(str(result["status"]) for result in results)
    return Counter({f"request {status}": items})


# -- the load -------------------------------------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes, bool]:
    """One keep-alive HTTP/1.1 POST: (status, body, whether the server closes the connection)."""
    writer.write(head % len(body) + body)
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header[9:12])
    length = re.search(rb"(?im)^content-length:\s*(\d+)", header)
    if length is None:
        raise RuntimeError(f"an answer without Content-Length: {header[:300]!r}")
    payload = await reader.readexactly(int(length.group(1)))
    return status, payload, re.search(rb"(?im)^connection:\s*close", header) is not None


async def _post_all(port: int, path: str, bodies: list[bytes], concurrency: int, items: int) -> Counter[str]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n"
    ).encode()
    pending = iter(bodies)
    counts: Counter[str] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        try:
            for body in pending:
                status, payload, close = await _exchange(reader, writer, head, body)
                counts.update(outcomes(status, payload, items and body.count(b'"transaction_id"')))
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(max(1, min(concurrency, len(bodies))))))
    return counts


def post_all(port: int, mode: str, bodies: list[bytes], connections: int, bulk: int = BULK_SIZE) -> Counter[str]:
    """Every transaction of `bodies` POSTed over `connections`, singly or in bulk requests of `bulk`; their
    outcomes."""
    if mode == "single":
        return asyncio.run(_post_all(port, "/api/v1/transactions/", bodies, connections, 0))
    return asyncio.run(_post_all(port, "/api/v1/transactions/bulk", bulk_bodies(bodies, bulk), connections, 1))


# -- Redis of our own -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


# -- checkouts and gateways -----------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def before_checkout(before: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The "before" checkout: `before` itself when it is a folder, else a git worktree of that commit in
    a temporary folder, removed afterwards; with what it is."""
    if Path(before).is_dir():
        yield Path(before).resolve(), {"path": str(Path(before).resolve())}
        return
    commit = git("rev-parse", "--verify", f"{before}^{{commit}}")
    path = Path(tempfile.mkdtemp(prefix="redis-cost-before-"))
    git("worktree", "add", "--detach", str(path), commit)
    try:
        yield path, {"commit": commit, "worktree": str(path)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def after_state(path: Path) -> dict[str, Any]:
    """What the "after" checkout holds: its HEAD, the files changed from it, and a digest of the change."""
    if path.resolve() != ROOT:
        return {"path": str(path)}
    changed = git("status", "--porcelain", "--", "gateway", "fastcore", "processor").splitlines()
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "gateway", "fastcore", "processor"],
                          capture_output=True, check=True).stdout  # fmt: skip
    digest = hashlib.sha256(diff)
    for line in changed:  # files git does not track yet: their names and contents
        if line.startswith("??"):
            top = ROOT / line[3:]
            for file in sorted(p for p in [top, *top.rglob("*")] if p.is_file()):
                digest.update(str(file).encode() + file.read_bytes())
    head = git("rev-parse", "HEAD")
    return {"path": str(ROOT), "head": head, "changed": changed, "change_sha256": digest.hexdigest()[:16]}


def prepare_fastcore(before: Path, before_info: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The compiled fastcore extension into the "before" worktree when fastcore's source there is the
    working tree's; else pure Python for both. The environment both gateways get, and what was done."""
    if "commit" not in before_info:
        return {}, "each checkout's own"
    changed = git("diff", "--name-only", before_info["commit"], "--", "fastcore/")
    built = sorted(ROOT.glob("fastcore/_core*.so"))
    if changed or not built:
        why = f"fastcore differs at {before_info['commit'][:7]}: {changed}" if changed else "no compiled extension"
        return {"FASTCORE_NO_EXTENSIONS": "1"}, f"pure Python for both ({why})"
    for library in built:
        shutil.copy2(library, before / "fastcore" / library.name)
    return {}, f"compiled, {built[0].name} copied into the before worktree (fastcore/ unchanged since that commit)"


def start_gateway(label: str, checkout: Path, redis_url: str, env: dict[str, str], scratch: Path) -> Any:
    """The gateway of `checkout` (benchmarks.run's Server: Granian, one worker per core, open mode)."""
    from benchmarks.run import BIN, Server
    from gateway.__main__ import granian_arguments

    # Granian run directly with the launcher's options (gateway/__main__.py): the checkout measured may
    # predate the launcher
    port = free_port()
    command = [str(BIN / "granian"), *granian_arguments("127.0.0.1", port, os.cpu_count() or 1, 10)]
    command += ["--working-dir", str(checkout), "--log-level", "warning"]
    metrics = scratch / f"metrics-{label}"
    metrics.mkdir()
    environment = {
        **env,
        "PYTHONPATH": str(checkout),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_PARTNERS_FILE": "",  # open mode
        "GATEWAY_ACCESS_LOG": "false",  # the client's side; Redis does the same either way
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "GATEWAY_OPS_PORT": str(free_port()),  # an operations listener of its own, not a running gateway's 9101
    }
    server = Server(label, command, port, "/ready", environment)
    try:
        with contextlib.chdir(checkout):  # Granian puts its working directory first on the path, and its cwd
            server.start(scratch)
    except SystemExit as failed:
        server.stop()
        log = scratch / f"{label}.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise SystemExit(f"{failed}\n{tail}") from None
    return server


def loaded_from(server: Any, checkout: Path) -> list[str]:
    """Where each worker's compiled fastcore was loaded from (/proc/<pid>/maps): a check that the worker
    runs `checkout`'s code; empty without the compiled extension."""
    places = set()
    for pid in server.workers():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "fastcore/_core" in line:
                    places.add(line.split(maxsplit=5)[-1])
    if any(not place.startswith(str(checkout.resolve()) + "/") for place in places):
        raise SystemExit(f"a worker of {server.name} loaded fastcore from {sorted(places)}, not from {checkout}")
    return sorted(places)


# -- one checkout, one round ----------------------------------------------------------------------


def mode_result(
    window: Window, counts: Counter[str], families: dict[str, tuple[int, list[int]]], scripted: set[str]
) -> dict[str, Any]:
    """Everything about one load, per accepted transaction."""
    accepted = counts.get("202", 0)
    cost = command_cost(window.stats, scripted)
    keys = sum(count for count, _ in families.values())
    sampled = [size for _, sizes in families.values() for size in sizes]
    by_key = {
        family: {"keys_per_txn": per(count, accepted), "bytes_per_txn": scaled_sample(sizes, count, accepted)}
        for family, (count, sizes) in sorted(families.items())
    }
    return {
        "accepted": accepted,
        "outcomes": dict(counts),
        "seconds": round(window.seconds, 2),
        "transactions_per_second": round(accepted / window.seconds) if window.seconds else None,
        "commands_per_txn": per(cost["commands"], accepted),
        "scripts_per_txn": per(cost["scripts"], accepted),
        "sent_per_txn": per(cost["sent"], accepted),
        "commandstats_us_per_txn": per(cost["usec"], accepted, 2),
        "cpu_us_per_txn": per(window.cpu_seconds * 1e6, accepted, 2),
        "gateway_cpu_us_per_txn": per(window.gateway_cpu_seconds * 1e6, accepted, 1),
        "schedstat_cpu_us_per_txn": per(window.schedstat_seconds * 1e6, accepted, 2),
        "used_memory_bytes_per_txn": per(window.used_memory, accepted, 1),
        "memory_usage_bytes_per_txn": scaled_sample(sampled, keys, accepted),
        "keys_per_txn": per(keys, accepted),
        "keys_sampled": len(sampled),
        "calls_per_txn": {name: per(n, accepted) for name, n in sorted(cost["by_command"].items())},
        "by_key": by_key,
    }


def replay_result(window: Window, counts: Counter[str], scripted: set[str]) -> dict[str, Any]:
    replayed = counts.get("200", 0)
    cost = command_cost(window.stats, scripted)
    return {
        "replay_outcomes": dict(counts),
        "replay_commands_per_replay": per(cost["commands"], replayed),
        "replay_commandstats_us_per_replay": per(cost["usec"], replayed, 2),
        "replay_cpu_us_per_replay": per(window.cpu_seconds * 1e6, replayed, 2),
        "replay_gateway_cpu_us_per_replay": per(window.gateway_cpu_seconds * 1e6, replayed, 1),
        "replay_schedstat_cpu_us_per_replay": per(window.schedstat_seconds * 1e6, replayed, 2),
        "replay_calls_per_replay": {name: per(n, replayed) for name, n in sorted(cost["by_command"].items())},
    }


def measure_checkout(
    label: str, checkout: Path, plan: argparse.Namespace, env: dict[str, str], scratch: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One round of one checkout: its own Redis and gateway; single, then bulk, each with its replays."""
    scripted = scripted_commands([p.read_text() for p in sorted((checkout / "gateway").rglob("*.lua"))])
    rng = random.Random(plan.seed)
    server = RedisServer(scratch)
    result: dict[str, Any] = {}
    try:
        gateway = start_gateway(label, checkout, server.url, env, scratch)
        try:
            result["fastcore_loaded_from"] = loaded_from(gateway, checkout)
            warm = seed_bodies(secrets.token_hex(2), 2 * WARMUP)
            # over 16 connections, so that every worker (each connection is one's) has run every script
            measured(server, partial(post_all, gateway.port, "single", warm[:WARMUP], 16))
            measured(server, partial(post_all, gateway.port, "bulk", warm[WARMUP:], 16, bulk=10))
            for mode, count in (("single", plan.single_transactions), ("bulk", plan.transactions)):
                server.client.flushall()
                bodies = seed_bodies(secrets.token_hex(2), count)
                connections = plan.connections if mode == "single" else BULK_CONCURRENCY
                load = partial(post_all, gateway.port, mode, connections=connections)
                processes = [gateway.process.pid, *gateway.workers()]
                window, counts = measured(server, partial(load, bodies), processes)
                result[mode] = mode_result(window, counts, memory_sample(server, plan.sample, rng), scripted)
                result[mode]["memory_stats_per_txn"] = memory_split(server.client.memory_stats(), counts["202"])
                again = bodies[: plan.replays] if mode == "single" else bodies  # bulk replays are cheap
                window, counts = measured(server, partial(load, again), processes)
                result[mode] |= replay_result(window, counts, scripted)
                r = result[mode]
                log(
                    f"  {label}, {mode}: {r['accepted']} accepted in {r['seconds']} s; per transaction "
                    f"{r['commands_per_txn']} commands, {r['cpu_us_per_txn']} µs CPU, "
                    f"{r['used_memory_bytes_per_txn']} / {r['memory_usage_bytes_per_txn']} bytes; per replay "
                    f"{r['replay_commands_per_replay']} commands, {r['replay_cpu_us_per_replay']} µs"
                )
        finally:
            gateway.stop()
    finally:
        server.stop()
    return result


# -- the run --------------------------------------------------------------------------------------


def load_targets(path: Path) -> dict[str, float]:
    found: dict[str, float] = tomllib.loads(path.read_text()).get("redis_cost", {})
    return found


def delete_topics(bootstrap: str, prefix: str) -> None:
    """The run's own topics, gone."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [name for name in admin.list_topics(timeout=15).topics if name.startswith(prefix)]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
        with contextlib.suppress(Exception):
            future.result(30)


def run(plan: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from gateway.kafka.producer import ensure_topics
    from gateway.settings import Settings

    tag = secrets.token_hex(3)
    prefix = f"rcost-{tag}."
    settings = msgspec.structs.replace(Settings.from_env(), topic_prefix=prefix)
    ensure_topics(settings)
    after = Path(plan.after).resolve()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.redis_cost", *plan.argv]),
        "plan": {
            "rounds": plan.rounds, "transactions_bulk": plan.transactions,
            "transactions_single": plan.single_transactions, "replays": plan.replays, "bulk_size": BULK_SIZE,
            "single_connections": plan.connections, "bulk_requests_in_flight": BULK_CONCURRENCY,
            "gateway_workers": os.cpu_count(), "memory_usage_sample": plan.sample, "topic_prefix": prefix,
        },
        "rounds": [],
        "warnings": [],
    }  # fmt: skip
    try:
        with before_checkout(plan.before) as (before, before_info), tempfile.TemporaryDirectory() as scratch_dir:
            fastcore_env, fastcore = prepare_fastcore(before, before_info)
            report["fastcore"] = fastcore
            report["checkouts"] = {"before": before_info, "after": after_state(after)}
            redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
            report["redis_server"] = redis_version.strip()
            log(f"redis cost: before {before_info.get('commit', before)[:12]}, after {after}; fastcore {fastcore}")
            checkouts = {"before": before, "after": after}
            env = {**os.environ, **fastcore_env, "GATEWAY_TOPIC_PREFIX": prefix}
            for round_ in range(plan.rounds):
                for label in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                    log(f"redis cost, round {round_ + 1} of {plan.rounds}: {label}")
                    scratch = Path(scratch_dir) / f"{label}-{round_}"
                    scratch.mkdir()
                    partner = {"GATEWAY_PARTNER": f"rcost-{tag}-{label}-{round_}"}
                    result = measure_checkout(label, checkouts[label], plan, {**env, **partner}, scratch, log)
                    if label == "after":  # what it was at the end of the round (the tree may be edited)
                        state = after_state(after)
                        result["after_state"] = f"{state.get('head', '')[:12]}+{state.get('change_sha256', '')}"
                    report["rounds"].append({"round": round_, "checkout": label, **result})
    finally:
        delete_topics(settings.kafka_bootstrap, prefix)
    states = [r["after_state"] for r in report["rounds"] if r["checkout"] == "after"]
    if len(set(states)) > 1:
        report["warnings"].append(
            "the working tree changed during the run: the after rounds measured different code (HEAD+digest of "
            f"the change, each after round's end: {', '.join(states)})"
        )
    for r in report["rounds"]:
        for mode in MODES:
            for name, found in (("", r[mode]["outcomes"]), ("replays ", r[mode]["replay_outcomes"])):
                wanted = "200" if name else "202"
                other = {status: n for status, n in found.items() if status != wanted}
                if other:
                    report["warnings"].append(
                        f"round {r['round'] + 1}, {r['checkout']}, {mode} {name}answered other than {wanted}: {other}"
                    )
    medians: dict[str, dict[str, dict[str, Any]]] = {}
    for label in ("before", "after"):
        mine = [r for r in report["rounds"] if r["checkout"] == label]
        medians[label] = {mode: median_of([r[mode] for r in mine]) for mode in MODES}
    report["medians"] = medians
    return report


def finish(report: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """The rows, their table, the misses and the verdict, from the medians."""
    report["targets"] = targets
    report["rows"] = rows(report["medians"], targets)
    report["misses"] = [f"{r['metric']}, {r['mode']}: {r['reason']}" for r in report["rows"] if r["passed"] is False]
    report["verdict"] = "fail" if report["misses"] else "pass"
    report["table"] = markdown(report["rows"])
    report["breakdown"] = breakdown(report["medians"])
    return report


def document(report: dict[str, Any]) -> str:
    """The Markdown report: what was compared, the table, the misses, the breakdown."""
    plan, checkouts = report["plan"], report["checkouts"]
    after = checkouts["after"]
    before = checkouts["before"].get("commit", checkouts["before"].get("path", "?"))
    changed = f", with {len(after.get('changed', []))} changed files ({after.get('change_sha256')})" if after.get(
        "changed") else ""  # fmt: skip
    lines = [
        f"# Redis cost per transaction, {report['started']}",
        "",
        f"before: {before}; after: the working tree, at the start {after.get('head', after.get('path'))}{changed}. "
        f"Medians of {plan['rounds']} interleaved rounds; bulk {plan['transactions_bulk']:,} transactions in "
        f"requests of {plan['bulk_size']}, single {plan['transactions_single']:,} over {plan['single_connections']} "
        f"connections; replays: the bulk ones all again, the first {plan['replays']:,} single ones. "
        f"fastcore: {report['fastcore']}. {report['redis_server']}.",
        "",
        report["table"],
        "",
        *(
            [f"Misses ({len(report['misses'])}):", *(f"- {m}" for m in report["misses"]), ""]
            if report["misses"]
            else []
        ),
        *(["Warnings:", *(f"- {w}" for w in report["warnings"]), ""] if report.get("warnings") else []),
        "Per transaction, by command and by key (medians):",
        "",
        report["breakdown"],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--transactions", type=int, default=100_000, help="new transactions through bulk")
    parser.add_argument("--single-transactions", type=int, help="new transactions one by one (default: --transactions)")
    parser.add_argument("--replays", type=int, default=10_000, help="single transactions sent again (bulk: all)")
    parser.add_argument("--connections", type=int, default=CONCURRENCY, help="of the single load")
    parser.add_argument("--sample", type=int, default=5000, help="keys whose MEMORY USAGE is read")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help=f"a commit or a folder (default {DEFAULT_BEFORE})")
    parser.add_argument("--after", default=str(ROOT), help="a folder (default: this working tree)")
    parser.add_argument("--targets", type=Path, default=HERE / "targets.toml")
    parser.add_argument("--json", type=Path, help="the report (default benchmarks/results/redis-cost-<stamp>.json)")
    parser.add_argument("--seed", type=int, default=23, help="of the MEMORY USAGE sample")
    plan = parser.parse_args(argv)
    plan.argv = sys.argv[1:] if argv is None else argv
    plan.single_transactions = plan.single_transactions or plan.transactions
    if plan.rounds < 1 or plan.transactions < 1 or plan.single_transactions < 1 or plan.replays < 0:
        parser.error("--rounds and the transactions must be positive, --replays not negative")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = plan.json or HERE / "results" / f"redis-cost-{stamp}.json"

    def log(message: str) -> None:
        print(message, flush=True)

    report = finish(run(plan, log), load_targets(plan.targets))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    path.with_suffix(".md").write_text(document(report))
    print(f"\n{document(report)}\nreport: {path} (and {path.with_suffix('.md').name})")
    return 0 if report["verdict"] == "pass" else 1


# -- as a phase of `make bench` (benchmarks/run.py) -----------------------------------------------


def phase(rounds: int, transactions: int, path: Path, targets: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """This module in its own process (its progress on our output); its report, or what went wrong."""
    log(f"redis cost per transaction (issue 23): before and after, {rounds} rounds, {transactions:,} transactions")
    command = [sys.executable, "-m", "benchmarks.redis_cost", "--rounds", str(rounds)]
    command += ["--transactions", str(transactions), "--json", str(path), "--targets", str(targets)]
    budget = 300 + rounds * 2 * (90 + transactions / 400)  # 100,000: about 1 minute a checkout, a round
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {budget:.0f} s"}
    if not path.exists():
        return {"error": f"exit {done.returncode}, no report"}
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def gates(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The phase's targets as benchmarks.run's gates."""
    if result is None:
        return []
    if "rows" not in result:
        return [{"target": "redis cost per transaction", "measured": result.get("error"), "limit": None, "unit": "",
                 "passed": False}]  # fmt: skip
    return [
        {
            "target": f"redis cost: {row['metric']}, {row['mode']}",
            "measured": row["after"],
            "limit": row["limit"],
            "unit": row["unit"],
            "passed": row["passed"],
        }
        for row in result["rows"]
        if row["passed"] is not None
    ]


if __name__ == "__main__":
    sys.exit(main())
