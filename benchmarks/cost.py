"""`make bench`'s headline (issue 25): the whole stack's CPU time per accepted transaction.

    python -m benchmarks.cost [--rounds 3] [--seconds 10] [--servers gateway,gateway-open,peer,ceiling]
                              [--json PATH]

The servers of benchmarks/run.py (the gateway authenticated and open, the FastAPI peer, bare Granian as
the ceiling) run at once, each with one worker per core, on the local stack (GATEWAY_* variables). In
every round each server takes its phases in turn, the servers' order rotating from round to round:

  single   wrk, 64 connections, new transactions (the seed's shape, benchmarks/wrk_new_transactions.lua)
  replay   wrk, 64 connections, exact resubmissions of transactions submitted just before (200s)
  bulk     wrk, 8 connections, requests of 500 new transactions (the gateways only; the peer has none)

Around each, the CPU time (user + system, /proc) of the server's processes, Redis and the Kafka broker
(benchmarks/cpu.py), and of wrk apart, is divided by the transactions answered 2xx: µs of CPU per
transaction, whole stack (load generator excluded) and per part. The medians of the rounds are the
result; from the stack's figure, the throughput the stack would reach on two cores of its own (2 s of
CPU per second / CPU per transaction): an upper bound that assumes the work parallelises perfectly, not a
measurement.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.cpu import StackMeter, per_answer_us
from benchmarks.load import wrk
from benchmarks.run import verdict
from benchmarks.servers import Contender, servers
from gateway.kafka.producer import ensure_topics
from gateway.settings import Settings

SERVERS = ("gateway", "gateway-open", "peer", "ceiling")
PHASES = ("single", "replay", "bulk")
CONNECTIONS = 64
BULK_ITEMS = 500
BULK_CONNECTIONS = 8
REPLAYED = 2000  # distinct transactions each wrk thread replays


def _phases(server: Contender) -> tuple[str, ...]:
    if not server.stateful:
        return ("single",)  # the ceiling answers a fixed 202: nothing to replay, no bulk
    return PHASES if server.name.startswith("gateway") else ("single", "replay")


def measure(server: Contender, phase: str, seconds: int, meter: StackMeter, replay_prefix: str) -> dict[str, Any]:
    """One phase against one running server: throughput, errors and CPU per accepted transaction."""
    items = BULK_ITEMS if phase == "bulk" else 0
    connections = BULK_CONNECTIONS if phase == "bulk" else CONNECTIONS
    script = {"BENCH_REPLAY": str(REPLAYED), "BENCH_REPLAY_PREFIX": replay_prefix} if phase == "replay" else {}
    if phase == "replay":  # submit them first: every request measured after this is a replay
        wrk(server.url, connections, 2, server.authorization, script_env=script)
    with meter.with_part("server", server.pid).measure() as used:
        run = wrk(server.url, connections, seconds, server.authorization, items, script)
    answered = (run["requests"] - run["errors"]) * max(items, 1)
    return {
        "transactions_per_second": round(answered / seconds),
        "error_rate": run["error_rate"],
        "p99_us": run["latency_us"].get("p99"),
        "cpu_us": per_answer_us(used, answered),
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number across rounds (nested dicts alike)."""
    first = rounds[0]
    if isinstance(first, dict):
        return {key: median_of([r[key] for r in rounds if key in r]) for key in first}
    return round(statistics.median(rounds), 3) if isinstance(first, int | float) else first


def run(contenders: dict[str, Contender], rounds: int, seconds: int, meter: StackMeter, log: Any) -> dict[str, Any]:
    """Interleaved rounds over already started servers; every round's figures and their medians."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in contenders}
    names = list(contenders)
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            server = contenders[name]
            for phase in _phases(server):
                log(f"  cost round {number + 1}/{rounds}: {name} {phase}")
                prefix = f"cost-{uuid.uuid4().hex[:8]}"
                results[name].setdefault(phase, []).append(measure(server, phase, seconds, meter, prefix))
    medians = {name: {phase: median_of(runs) for phase, runs in phases.items()} for name, phases in results.items()}
    return {"rounds": results, "medians": medians, "table": table(medians)}


def table(medians: dict[str, dict[str, Any]]) -> str:
    """The medians as a markdown table: per server and phase, throughput and µs of CPU per transaction."""
    parts = ("server", "redis", "kafka", "load")
    lines = [
        "| server | phase | tx/s | stack µs/tx | server | Redis | Kafka broker | wrk (apart)"
        " | two cores of its own, tx/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, phases in medians.items():
        for phase, result in phases.items():
            cpu = result["cpu_us"]
            cells = " | ".join(f"{cpu.get(part, 0):,.1f}" for part in parts)
            lines.append(
                f"| {name} | {phase} | {result['transactions_per_second']:,.0f} | {cpu['stack']:,.1f} | {cells}"
                f" | {cpu['two_core_capacity']:,.0f} |"
            )
    return "\n".join(lines)


def ratios(medians: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """What the targets compare: the authenticated gateway's single phase against the peer and the
    ceiling, its bulk against its single, in throughput and in CPU per transaction."""
    gateway, peer, ceiling = (medians.get(n, {}) for n in ("gateway", "peer", "ceiling"))

    def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
        x, y = a.get(key), b.get(key)
        return round(x / y, 3) if x and y else None

    single, bulk = gateway.get("single", {}), gateway.get("bulk", {})
    cpu = {phase: {"stack": r["cpu_us"]["stack"]} for phase, r in (("single", single), ("bulk", bulk)) if r}
    return {
        "cpu_single_over_peer": ratio(cpu.get("single", {}), peer.get("single", {}).get("cpu_us", {}), "stack"),
        "throughput_over_peer": ratio(single, peer.get("single", {}), "transactions_per_second"),
        "throughput_over_ceiling": ratio(single, ceiling.get("single", {}), "transactions_per_second"),
        "bulk_over_single": ratio(bulk, single, "transactions_per_second"),
        "bulk_stack_cpu_us": cpu.get("bulk", {}).get("stack"),
        "single_stack_cpu_us": cpu.get("single", {}).get("stack"),
    }


def gates(result: dict[str, Any] | None, targets: dict[str, Any]) -> list[dict[str, Any]]:
    """targets.toml's [cost] against the medians, as benchmarks.run's gates."""
    found = (result or {}).get("ratios", {})
    checks = (  # (what, measured, limit, higher is better, unit)
        ("cost: gateway single, stack CPU / peer's", found.get("cpu_single_over_peer"),
         targets["max_single_cpu_over_peer"], False, "x"),
        ("cost: gateway single, throughput / peer's", found.get("throughput_over_peer"),
         targets["min_single_throughput_over_peer"], True, "x"),
        ("cost: gateway single, throughput / ceiling's", found.get("throughput_over_ceiling"),
         targets["min_single_throughput_over_ceiling"], True, "fraction"),
        ("cost: gateway bulk of 500, stack CPU per transaction", found.get("bulk_stack_cpu_us"),
         targets["max_bulk_stack_cpu_us"], False, "µs"),
        ("cost: gateway bulk / single throughput", found.get("bulk_over_single"),
         targets["min_bulk_over_single"], True, "x"),
    )  # fmt: skip
    return [verdict(*check) for check in checks]


def phase(contenders: dict[str, Contender], rounds: int, seconds: int, settings: Settings, log: Any) -> dict[str, Any]:
    """benchmarks/run.py's cost phase: start the servers, measure, stop them."""
    meter = StackMeter.of_stack(settings.redis_url, settings.kafka_bootstrap)
    with tempfile.TemporaryDirectory() as scratch:
        for server in contenders.values():
            server.start(Path(scratch))
        try:
            result = run(contenders, rounds, seconds, meter, log)
        finally:
            for server in contenders.values():
                server.stop()
    result["ratios"] = ratios(result["medians"])
    result["method"] = __doc__.split("\n\n", 2)[2].strip() if __doc__ else ""
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "8100")))
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    settings = Settings.from_env()
    ensure_topics(settings)
    ensure_topics(msgspec.structs.replace(settings, topic_prefix="peer."))
    with tempfile.TemporaryDirectory() as scratch:
        every = servers(os.cpu_count() or 1, args.port_base, Path(scratch))
        contenders = {name: every[name] for name in args.servers.split(",")}
        result = phase(contenders, args.rounds, args.seconds, settings, lambda m: print(m, flush=True))
    print(result["table"])
    print(json.dumps(result["ratios"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
