"""Issue 13's A/B: the gateway's hand-written Redis client against maintained ones, on its real script.

    .venv/bin/python -m benchmarks.redis_clients --single redis://127.0.0.1:16379/0 \\
        --cluster redis://127.0.0.1:17001 [--seconds N] [--concurrency C] [--rounds R] \\
        [--clients pipeline,redis-py,coredis,valkey-glide] [--json out.json]

Either topology may be left out. Contenders, each used as a gateway worker would use it (one client
object in the process, shared by every task), with its fastest documented settings:

  pipeline      gateway.redis.pipeline.RedisPipeline (single node) and
                gateway.redis.cluster.RedisCluster (cluster; skipped, with a note, while
                that module is not importable): EVALSHA, EVAL on NOSCRIPT
  redis-py      redis.asyncio.Redis (its connection pool, sized to the concurrency) and
                redis.asyncio.cluster.RedisCluster; hiredis parser; `register_script`
  coredis       coredis.Redis and coredis.RedisCluster (multiplexed connections, compiled parser);
                `register_script`
  valkey-glide  GlideClient and GlideClusterClient (Rust core); `glide.Script` with `invoke_script`

The work is the gateway's: one call is `RESERVE` (gateway.idempotency.single_node) with the keys and
arguments `SingleNodeStore.reserve` sends for the bench's authenticated partner (its GCRA limit
checked, never reached; the request not signed), fresh ids every call, so every reply is `new`
(checked). The partner cycles over PARTNERS hash tags, `idem:{p.<n>}:…`, `txn:{p.<n>}:…`,
`nonce:{p.<n>}:…`, `rate:{p.<n>}`, so one call touches one slot and the calls spread over every
master. Every client gets the same sequence of keys, with ids of the same length, so Redis does
identical work for each.

Two measurements per client and topology, on uvloop (what Granian runs the gateway on):

  throughput   CONCURRENCY tasks calling back to back for SECONDS: calls/s (building a call's
               arguments, a few µs of Python, is included, the same for every client)
  latency      one task, sequential calls for SECONDS: p50 and p99 in µs (the call alone)

Every client is opened and warmed up first (connections made, the script loaded); then ROUNDS
rounds each measure every client on every topology, in an order rotated every round so the noise of
a shared machine falls on all alike, and the medians over the rounds are reported: a Markdown table
with each client's ratio to the pipeline on the same topology, and, with --json, a JSON document.
Issue 13's rule: keep a hand-written client only where no maintained one comes within 15% of it.
"""

import argparse
import asyncio
import contextlib
import gc
import hashlib
import inspect
import itertools
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from gateway.idempotency.reservation import Reservation
from gateway.idempotency.single_node import RESERVE
from gateway.partners.admission import nonce_key, rate_key
from gateway.redis.cluster import RedisCluster
from gateway.redis.pipeline import RedisPipeline
from settlement.ids import uuid7

CLIENTS = ("pipeline", "redis-py", "coredis", "valkey-glide")
TOPOLOGIES = ("single", "cluster")
PACKAGES = ("redis", "hiredis", "coredis", "valkey-glide", "uvloop")
TIMEOUT = 1.0  # seconds: the gateway's GATEWAY_REDIS_TIMEOUT_MS
PARTNERS = 1024  # hash tags the calls cycle over
PENDING_TTL_MS = 300_000  # the keys of a run expire (the bench's GATEWAY_IDEMPOTENCY_TTL_SECONDS)
TOPIC = "settlement.t1"
ADMISSION = ["0", repr(1_000_000 / 1_000_000), "1000000"]  # unsigned; the bench partner: rate and burst 1e6
WITHIN = 0.15  # issue 13: a maintained client within 15% of the hand-written one replaces it

Call = Callable[[list[str], list[Any]], Awaitable[Any]]


class Unavailable(Exception):
    """A client that cannot run on this topology here; the message says why."""


@dataclass
class Target:
    """A Redis deployment: its topology, the URL as given, and what the URL says."""

    topology: str
    url: str
    addresses: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_target(topology: str, url: str) -> Target:
    """`redis://[user:password@]host:port[,host:port...][/db]`: a seed list for a cluster."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "redis":
        raise SystemExit(f"{url}: only redis:// URLs are measured here")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    username = password = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username, password = (unquote(user) or None, unquote(secret)) if has_password else (None, unquote(user))
    addresses = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        addresses.append((host or address, int(port) if host else 6379))
    db = int(path.split("?")[0] or 0)
    return Target(topology, url, addresses, db, username, password)


# -- the workload ---------------------------------------------------------------------------------


# the one-node layout of gateway.idempotency.reservation, every key of a call in its partner's slot: the
# nonce key of an unsigned request (the digest of no nonce) and the partner's GCRA key
PARTNER_IDS = [f"p.{n}" for n in range(PARTNERS)]
NONCE_KEYS = [nonce_key(partner, "") for partner in PARTNER_IDS]
RATE_KEYS = [rate_key(partner) for partner in PARTNER_IDS]


class Workload:
    """RESERVE's keys and arguments as `SingleNodeStore.reserve` builds them, fresh ids every call.

    A random tag (the same length for every measurement) makes the ids unique to one measurement;
    apart from it every measurement sends the same sequence of keys."""

    def __init__(self) -> None:
        self._tag = secrets.token_hex(6)
        self._count = itertools.count()

    def next(self) -> tuple[list[str], list[Any]]:
        i = next(self._count)
        n = i % PARTNERS
        partner = PARTNER_IDS[n]
        key = f"{self._tag}-{i}"  # the idempotency key
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[::-1]  # a SHA-256 hex digest, as the gateway's
        r = Reservation(partner, key, f"txn_{self._tag}_{i}", fingerprint, uuid7(), TOPIC)
        keys = [r.idem_key, r.txn_key, NONCE_KEYS[n], RATE_KEYS[n]]
        return keys, [r.fp, r.key_id, str(PENDING_TTL_MS), str(PENDING_TTL_MS), r.event_id, r.topic, *ADMISSION]


def build_cost_us(number: int = 20_000) -> float:
    """What `Workload.next` costs per call (µs): part of every client's throughput alike."""
    workload = Workload()
    started = time.perf_counter()
    for _ in range(number):
        workload.next()
    return round((time.perf_counter() - started) / number * 1e6, 2)


# -- the clients ----------------------------------------------------------------------------------


@dataclass
class Opened:
    """A connected client: how to run RESERVE on it and how to close it."""

    call: Call
    close: Callable[[], Awaitable[None]]


async def _closing(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


async def open_pipeline(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    single = target.topology == "single"
    client = RedisPipeline(target.url, TIMEOUT) if single else RedisCluster(target.url, TIMEOUT)
    await client.connect()
    run_script = client.run_script

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return run_script(RESERVE, keys, args)

    return Opened(call, lambda: _closing(client.close()))


async def open_redis_py(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        raise Unavailable("hiredis is not installed: redis-py would parse in pure Python")
    connections = max(100, concurrency)  # one connection per call in flight: the pool never runs out
    options: dict[str, Any] = {"username": target.username, "password": target.password}
    options |= {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, "max_connections": connections}
    client: Any
    if target.topology == "single":
        host, port = target.addresses[0]
        client = Redis(host=host, port=port, db=target.db, **options)
    else:
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.addresses], **options)
        await client.initialize()
    script = client.register_script(RESERVE.source)

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return script(keys=keys, args=args)

    return Opened(call, client.aclose)


async def open_coredis(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    import coredis

    options: dict[str, Any] = {"username": target.username, "password": target.password}
    options |= {"stream_timeout": TIMEOUT, "connect_timeout": TIMEOUT}
    client: Any
    if target.topology == "single":
        host, port = target.addresses[0]
        client = coredis.Redis(host, port, target.db, **options)
    else:
        client = coredis.RedisCluster(startup_nodes=[{"host": h, "port": p} for h, p in target.addresses], **options)
    await stack.enter_async_context(client)  # coredis 6: a client lives inside `async with`
    script = client.register_script(RESERVE.source)

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return script(keys=keys, args=args)

    async def close() -> None:  # the exit stack closes it, in the task that opened it
        return None

    return Opened(call, close)


async def open_glide(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    from glide import (
        GlideClient,
        GlideClientConfiguration,
        GlideClusterClient,
        GlideClusterClientConfiguration,
        Logger,
        LogLevel,
        NodeAddress,
        Script,
        ServerCredentials,
    )

    Logger.set_logger_config(LogLevel.ERROR)  # not a warning per node on the first NOSCRIPT
    addresses = [NodeAddress(h, p) for h, p in target.addresses]
    credentials = ServerCredentials(target.password, target.username) if target.password else None
    timeout_ms = int(TIMEOUT * 1000)
    client: Any
    if target.topology == "single":
        config = GlideClientConfiguration(
            addresses, credentials=credentials, request_timeout=timeout_ms, database_id=target.db
        )
        client = await GlideClient.create(config)
    else:
        cluster_config = GlideClusterClientConfiguration(addresses, credentials=credentials, request_timeout=timeout_ms)
        client = await GlideClusterClient.create(cluster_config)
    script = Script(RESERVE.source)
    invoke = client.invoke_script

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return invoke(script, keys=keys, args=args)

    return Opened(call, client.close)


async def _close(client: Opened) -> None:
    with contextlib.suppress(Exception):
        await client.close()


OPENERS = {"pipeline": open_pipeline, "redis-py": open_redis_py, "coredis": open_coredis, "valkey-glide": open_glide}


# -- measuring ------------------------------------------------------------------------------------


class Failed(Exception):
    """A measurement that cannot count: an error, or a reply that is not `new`."""


def _check(reply: Any) -> None:
    # {remaining, reset, Redis's time, decision...} (reserve.lua)
    if not isinstance(reply, list) or len(reply) < 4 or reply[3] != b"new":
        raise Failed(f"unexpected reply {reply!r:.200}")


async def throughput(call: Call, concurrency: int, seconds: float) -> float:
    """`concurrency` tasks calling back to back for `seconds`: calls per second."""
    workload = Workload()
    next_call = workload.next
    running = True
    done = 0

    async def task() -> None:
        nonlocal done
        while running:
            keys, args = next_call()
            _check(await call(keys, args))
            done += 1

    def stop() -> None:
        nonlocal running
        running = False

    gc.collect()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    timer = loop.call_later(seconds, stop)
    tasks = [loop.create_task(task()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    except Exception as exc:
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)  # the others end with their call in flight
        raise Failed(f"{type(exc).__name__}: {exc}") from None
    finally:
        timer.cancel()
    return done / (time.perf_counter() - started)


async def latency(call: Call, seconds: float) -> tuple[float, float, int]:
    """One task, sequential calls for `seconds`: p50 and p99 of the call in µs, and how many."""
    workload = Workload()
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    deadline = clock() + int(seconds * 1e9)
    try:
        while clock() < deadline:
            keys, args = workload.next()
            started = clock()
            reply = await call(keys, args)
            samples.append(clock() - started)
            _check(reply)
    except Failed:
        raise
    except Exception as exc:
        raise Failed(f"{type(exc).__name__}: {exc}") from None
    samples.sort()

    def at(p: float) -> float:
        return round(samples[min(len(samples) - 1, int(p * len(samples)))] / 1000, 1)

    return at(0.50), at(0.99), len(samples)


async def measure(
    targets: list[Target],
    clients: list[str],
    seconds: float,
    concurrency: int,
    rounds: int,
    warmup: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Open and warm every client on every target, then the interleaved rounds; the report."""
    opened: dict[tuple[str, str], Opened] = {}
    skipped: dict[str, dict[str, str]] = {t.topology: {} for t in targets}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {t.topology: {} for t in targets}
    async with contextlib.AsyncExitStack() as stack:
        for target in targets:
            for name in clients:
                client: Opened | None = None
                try:
                    async with asyncio.timeout(30):  # in this task: coredis must be left where it was entered
                        client = await OPENERS[name](target, concurrency, stack)
                    await throughput(client.call, concurrency, warmup)
                    await latency(client.call, warmup / 2)
                except Unavailable as exc:
                    skipped[target.topology][name] = str(exc)
                except ImportError as exc:  # `make test` installs the dev extra, not the bench one
                    skipped[target.topology][name] = f"not installed ({exc.name}; pip install -e '.[bench]')"
                except Failed as exc:
                    skipped[target.topology][name] = f"failed: {exc}"
                except Exception as exc:  # a client that fails here is reported, not fatal to the others
                    skipped[target.topology][name] = f"failed: {type(exc).__name__}: {exc}"
                else:
                    opened[target.topology, name] = client
                    runs[target.topology][name] = []
                    continue
                if client is not None:
                    await _close(client)
                log(f"  {target.topology}: {name} not measured: {skipped[target.topology][name]}")
        try:
            for round_ in range(rounds):
                shift = round_ % len(clients)
                order = clients[shift:] + clients[:shift]
                for target in targets:
                    for name in order:
                        contender = opened.get((target.topology, name))
                        if contender is None:
                            continue
                        try:
                            rate = await throughput(contender.call, concurrency, seconds)
                            p50, p99, count = await latency(contender.call, seconds)
                        except Failed as exc:
                            skipped[target.topology][name] = f"failed in round {round_ + 1}: {exc}"
                            log(f"  {target.topology}: {name}: {skipped[target.topology][name]}")
                            await _close(opened.pop((target.topology, name)))
                            del runs[target.topology][name]
                            continue
                        runs[target.topology][name].append(
                            {"calls_per_s": round(rate, 1), "p50_us": p50, "p99_us": p99, "latency_calls": count}
                        )
                log(f"  round {round_ + 1}/{rounds} done")
        finally:
            for contender in opened.values():
                await _close(contender)
    return summarise(targets, runs, skipped)


def summarise(
    targets: list[Target], runs: dict[str, dict[str, list[dict[str, float]]]], skipped: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Medians over the rounds, ratios to the pipeline on the same topology, and issue 13's question."""
    topologies: dict[str, Any] = {}
    for target in targets:
        results: dict[str, Any] = {}
        for name, rounds in runs[target.topology].items():
            results[name] = {
                key: statistics.median(r[key] for r in rounds) for key in ("calls_per_s", "p50_us", "p99_us")
            } | {"rounds": rounds}
        base = results.get("pipeline")
        for result in results.values():
            result["throughput_ratio"] = round(result["calls_per_s"] / base["calls_per_s"], 3) if base else None
            result["p50_ratio"] = round(result["p50_us"] / base["p50_us"], 3) if base else None
        maintained = {n: r for n, r in results.items() if n != "pipeline"}
        within = [
            n
            for n, r in maintained.items()
            if base and r["throughput_ratio"] >= 1 - WITHIN and r["p50_ratio"] <= 1 + WITHIN
        ]
        topologies[target.topology] = {
            "url": target.url,
            "clients": results,
            "not_measured": skipped[target.topology],
            "within_15_percent": within if base else None,
        }
    return {"topologies": topologies}


# -- report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


async def server_version(target: Target) -> str:
    """The Redis version of the target's first address."""
    host, port = target.addresses[0]
    auth = ""
    if target.password:
        auth = f"{target.username or ''}:{target.password}@" if target.username else f":{target.password}@"
    client = RedisPipeline(f"redis://{auth}{host}:{port}/0", TIMEOUT)
    try:
        info = (await client.execute("INFO", "server")).decode()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    finally:
        client.close()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("redis_version:")), "?")


def table(report: dict[str, Any]) -> str:
    """The Markdown table: every client on every topology, medians over the rounds."""
    lines = [
        "| client | topology | calls/s | calls/s vs pipeline | p50 µs | p50 vs pipeline | p99 µs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    for topology, found in report["topologies"].items():
        for name in report["settings"]["clients"]:
            r = found["clients"].get(name)
            if r is None:
                reason = " ".join(found["not_measured"].get(name, "").split()).replace("|", "/")
                lines.append(f"| {name} | {topology} | not measured: {reason} | | | | |")
                continue
            lines.append(
                f"| {name} | {topology} | {r['calls_per_s']:,.0f} | {ratio(r['throughput_ratio'])} | "
                f"{r['p50_us']:.0f} | {ratio(r['p50_ratio'])} | {r['p99_us']:.0f} |"
            )
    return "\n".join(lines)


def verdicts(report: dict[str, Any]) -> list[str]:
    """Issue 13's question per topology, in words."""
    said = []
    for topology, found in report["topologies"].items():
        within = found["within_15_percent"]
        if within is None:
            said.append(f"{topology}: no pipeline measurement to compare with")
        elif within:
            said.append(
                f"{topology}: within 15% of the pipeline on throughput and p50: {', '.join(within)}; "
                "a maintained client can replace the hand-written one"
            )
        else:
            said.append(f"{topology}: no maintained client within 15% of the pipeline on both throughput and p50")
        missing = [name for name in found["not_measured"] if name != "pipeline"]
        if missing:
            said[-1] += f" (not measured: {', '.join(missing)})"
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", help="a single Redis node, redis://host:port/db")
    parser.add_argument("--cluster", help="a Redis Cluster seed, redis://host:port[,host:port...]")
    parser.add_argument("--seconds", type=float, default=5.0, help="each measurement, each round (default 5)")
    parser.add_argument("--concurrency", type=int, default=64, help="tasks of the throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load per client before the rounds")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"a subset of {','.join(CLIENTS)}")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvloop, as under Granian")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    targets = [parse_target(t, u) for t, u in (("single", args.single), ("cluster", args.cluster)) if u]
    if not targets:
        parser.error("give --single, --cluster or both")
    clients = args.clients.split(",")
    if unknown := set(clients) - set(CLIENTS):
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1:
        parser.error("--rounds, --seconds and --concurrency must be positive")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    async def run() -> dict[str, Any]:
        servers = {t.topology: await server_version(t) for t in targets}
        on = ", ".join(t.topology for t in targets)
        log(f"redis clients A/B: {', '.join(clients)} on {on}; {args.rounds} rounds of 2 x {args.seconds:g} s each")
        measured = await measure(targets, clients, args.seconds, args.concurrency, args.rounds, args.warmup, log)
        return {"redis_server": servers} | measured

    loop_factory = None
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # not in the dev extra (`make test`); Granian then runs on asyncio's loop too
            log("uvloop is not installed: measuring on asyncio's event loop")
            args.loop = "asyncio"
        else:
            loop_factory = uvloop.new_event_loop
    started = time.monotonic()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        measured = runner.run(run())
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.redis_clients", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "clients": clients,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "warmup_seconds": args.warmup,
            "loop": args.loop,
            "partners": PARTNERS,
            "script": "RESERVE",
            "script_sha": RESERVE.sha,
        },
        "versions": versions(),
        "machine": {"cpus": os.cpu_count(), "note": "Redis and the client share these cores"},
        "argument_build_us_per_call": build_cost_us(),
        **measured,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    report["table"] = table(report)
    report["verdicts"] = verdicts(report)
    print(report["table"])
    for line in report["verdicts"]:
        print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if any(found["clients"] for found in report["topologies"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
