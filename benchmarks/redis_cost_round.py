"""One round of one checkout for issue 23's measurement (benchmarks/redis_cost.py): a Redis and a gateway
of its own, the single and the bulk loads each followed by its replays, and what each cost per
transaction."""

import argparse
import random
import secrets
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.redis_cost_checkouts import loaded_from, start_gateway
from benchmarks.redis_cost_load import post_all, seed_bodies
from benchmarks.redis_cost_server import RedisServer, Window, measured, memory_sample, memory_split
from benchmarks.redis_cost_stats import command_cost, per, scaled_sample, scripted_commands

BULK_CONCURRENCY = 4  # bulk requests in flight at once
WARMUP = 200  # transactions, through each endpoint, before the first FLUSHALL


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
                processes = [gateway.pid, *gateway.workers()]
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
