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

The parts: redis_clients_adapters.py (the URL's deployment, each client opened with RESERVE as one
call), redis_clients_measurement.py (the workload, throughput, latency, the rounds and the medians),
redis_clients_report.py (versions, the table, the verdicts); this module is the command.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.redis_clients_adapters import CLIENTS, Target, parse_target
from benchmarks.redis_clients_measurement import PARTNERS, build_cost_us, measure
from benchmarks.redis_clients_report import server_version, table, verdicts, versions
from gateway.idempotency.single_node import RESERVE

TOPOLOGIES = ("single", "cluster")


def log(message: str) -> None:
    """Progress, on stderr: stdout carries the table and the verdicts."""
    print(message, file=sys.stderr, flush=True)


def argument_parser() -> argparse.ArgumentParser:
    """The command's options."""
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
    return parser


def parse_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[Target], list[str]]:
    """The options, the targets they name and the clients to measure; a usage error ends the command."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    targets = [parse_target(t, u) for t, u in zip(TOPOLOGIES, (args.single, args.cluster), strict=True) if u]
    if not targets:
        parser.error("give --single, --cluster or both")
    clients = args.clients.split(",")
    if unknown := set(clients) - set(CLIENTS):
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1:
        parser.error("--rounds, --seconds and --concurrency must be positive")
    return args, targets, clients


def loop_factory(args: argparse.Namespace) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for and installed; otherwise asyncio's (and `args.loop` says so)."""
    if args.loop != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # not in the dev extra (`make test`); Granian then runs on asyncio's loop too
        log("uvloop is not installed: measuring on asyncio's event loop")
        args.loop = "asyncio"
        return None
    return uvloop.new_event_loop


async def measure_all(args: argparse.Namespace, targets: list[Target], clients: list[str]) -> dict[str, Any]:
    """The servers' versions, then the measurement of every client on every target."""
    servers = {t.topology: await server_version(t) for t in targets}
    on = ", ".join(t.topology for t in targets)
    log(f"redis clients A/B: {', '.join(clients)} on {on}; {args.rounds} rounds of 2 x {args.seconds:g} s each")
    measured = await measure(targets, clients, args.seconds, args.concurrency, args.rounds, args.warmup, log)
    return {"redis_server": servers} | measured


def assemble_report(
    args: argparse.Namespace, argv: list[str] | None, clients: list[str], measured: dict[str, Any], started: float
) -> dict[str, Any]:
    """The JSON document: the command, its settings, what ran where, the measurement, table and verdicts."""
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
    return report


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the verdicts, write the JSON; 1 when no client was measured."""
    args, targets, clients = parse_arguments(argv)
    factory = loop_factory(args)
    started = time.monotonic()
    with asyncio.Runner(loop_factory=factory) as runner:
        measured = runner.run(measure_all(args, targets, clients))
    report = assemble_report(args, argv, clients, measured, started)
    print(report["table"])
    for line in report["verdicts"]:
        print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if any(found["clients"] for found in report["topologies"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
