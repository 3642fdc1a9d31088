"""The Redis clients A/B's measurement (benchmarks/redis_clients.py): the work of one call (RESERVE as
the gateway sends it), throughput and latency of one client, the interleaved rounds over every client
and topology, and the medians with issue 13's question answered."""

import asyncio
import contextlib
import gc
import hashlib
import itertools
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.redis_clients_adapters import OPENERS, Call, Opened, Target, Unavailable, close_quietly
from gateway.idempotency.reservation import Reservation
from gateway.partners.admission import nonce_key, rate_key
from settlement.ids import uuid7

PARTNERS = 1024  # hash tags the calls cycle over
PENDING_TTL_MS = 300_000  # the keys of a run expire (the bench's GATEWAY_IDEMPOTENCY_TTL_SECONDS)
TOPIC = "settlement.t1"
ADMISSION = ["0", repr(1_000_000 / 1_000_000), "1000000"]  # unsigned; the bench partner: rate and burst 1e6
WITHIN = 0.15  # issue 13: a maintained client within 15% of the hand-written one replaces it
OPEN_TIMEOUT = 30  # seconds to connect a client and load its script

Log = Callable[[str], None]
Rounds = dict[str, dict[str, list[dict[str, float]]]]  # topology -> client -> one result per round


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


# -- one client -----------------------------------------------------------------------------------


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


# -- every client, the rounds ---------------------------------------------------------------------


@dataclass
class Contest:
    """The clients in the running on each topology, the ones that are not and why, and the results."""

    opened: dict[tuple[str, str], Opened] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    runs: Rounds = field(default_factory=dict)

    async def withdraw(self, topology: str, name: str, reason: str, log: Log) -> None:
        """A client that failed in a round: said why, closed, and its rounds left out of the report."""
        self.skipped[topology][name] = reason
        log(f"  {topology}: {name}: {reason}")
        await close_quietly(self.opened.pop((topology, name)))
        del self.runs[topology][name]


async def open_warmed(
    name: str, target: Target, concurrency: int, warmup: float, stack: contextlib.AsyncExitStack
) -> tuple[Opened | None, str]:
    """One client connected, its script loaded and warmed up; or None and why not (then closed)."""
    client: Opened | None = None
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):  # in this task: coredis must be left where it was entered
            client = await OPENERS[name](target, concurrency, stack)
        await throughput(client.call, concurrency, warmup)
        await latency(client.call, warmup / 2)
    except Unavailable as exc:
        reason = str(exc)
    except ImportError as exc:  # `make test` installs the dev extra, not the bench one
        reason = f"not installed ({exc.name}; pip install -e '.[bench]')"
    except Failed as exc:
        reason = f"failed: {exc}"
    except Exception as exc:  # a client that fails here is reported, not fatal to the others
        reason = f"failed: {type(exc).__name__}: {exc}"
    else:
        return client, ""
    if client is not None:
        await close_quietly(client)
    return None, reason


async def open_contest(
    targets: list[Target],
    clients: list[str],
    concurrency: int,
    warmup: float,
    stack: contextlib.AsyncExitStack,
    log: Log,
) -> Contest:
    """Every client opened and warmed up on every target; those that cannot be are set aside."""
    contest = Contest(skipped={t.topology: {} for t in targets}, runs={t.topology: {} for t in targets})
    for target in targets:
        for name in clients:
            client, reason = await open_warmed(name, target, concurrency, warmup, stack)
            if client is not None:
                contest.opened[target.topology, name] = client
                contest.runs[target.topology][name] = []
                continue
            contest.skipped[target.topology][name] = reason
            log(f"  {target.topology}: {name} not measured: {reason}")
    return contest


async def measure_round(
    round_: int, targets: list[Target], clients: list[str], contest: Contest, seconds: float, concurrency: int, log: Log
) -> None:
    """One round: every client still in the running on every target, in an order rotated each round."""
    shift = round_ % len(clients)
    order = clients[shift:] + clients[:shift]
    for target in targets:
        for name in order:
            contender = contest.opened.get((target.topology, name))
            if contender is None:
                continue
            try:
                rate = await throughput(contender.call, concurrency, seconds)
                p50, p99, count = await latency(contender.call, seconds)
            except Failed as exc:
                await contest.withdraw(target.topology, name, f"failed in round {round_ + 1}: {exc}", log)
                continue
            contest.runs[target.topology][name].append(
                {"calls_per_s": round(rate, 1), "p50_us": p50, "p99_us": p99, "latency_calls": count}
            )


async def measure(
    targets: list[Target],
    clients: list[str],
    seconds: float,
    concurrency: int,
    rounds: int,
    warmup: float,
    log: Log,
) -> dict[str, Any]:
    """Open and warm every client on every target, then the interleaved rounds; the report."""
    async with contextlib.AsyncExitStack() as stack:
        contest = await open_contest(targets, clients, concurrency, warmup, stack, log)
        try:
            for round_ in range(rounds):
                await measure_round(round_, targets, clients, contest, seconds, concurrency, log)
                log(f"  round {round_ + 1}/{rounds} done")
        finally:
            for contender in contest.opened.values():
                await close_quietly(contender)
    return summarise(targets, contest.runs, contest.skipped)


def summarise(targets: list[Target], runs: Rounds, skipped: dict[str, dict[str, str]]) -> dict[str, Any]:
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
