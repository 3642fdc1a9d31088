"""`make bench`: the gateway, the peer and the ceiling under identical Locust load, in one run.

    .venv/bin/python -m benchmarks.run [--smoke] [--out DIR] [--servers gateway,peer,ceiling]
                                       [--soak-seconds N] [--targets FILE] [--redis-clients-rounds N]
                                       [--redis-cluster-url URL] [--cluster-rounds N]

Needs the local stack's Redis and Kafka (GATEWAY_REDIS_URL, GATEWAY_KAFKA_BOOTSTRAP; deploy/bench.sh
brings them up). Each server runs alone, with one worker per core, and goes through the same phases:

Two gateways run: `gateway`, authenticated (a partner registry, Bearer keys, the GCRA limit in Redis
set far above the load so it is checked on every request and never refuses), and `gateway-open`, the
same server in open mode (no registry, no limit): their ratio is what partners cost.

  one_connection_new     1 user, new transactions back to back: unloaded latency
  one_connection_replay  1 user, exact resubmissions (not for the ceiling, which has no state)
  steady                 a fixed rate of new transactions (1,000/s), spread over 20 users
  steps                  closed-loop users stepped up, new transactions as fast as they are answered
  wrk                    single-connection latency and stepped connections again, from wrk (C, not
                         Python): a cross-check of Locust, and a load Locust cannot run out of CPU for

The maximum sustained throughput is the best step, of either tool, with under 0.1% errors.

then, for the gateway only, a soak at half its maximum throughput that samples every worker's resident
memory. Latencies are exact (HDR histograms in microseconds, see locustfile.py). The report goes to
OUT/<timestamp>.json with a plot OUT/<timestamp>.png; the verdict against targets.toml is printed and
is the exit status. `--smoke` runs a 10-second version against the gateway only and gates nothing.

With the cluster stack up (deploy/bench.sh starts it beside the single one and passes its variables in
BENCH_CLUSTER_ENV), `cluster` measures the open gateway on one node and on the cluster side by side, the
way the partners A/B does (`--cluster-rounds`, 0 skips it).

Last, with no server running, `redis_clients` (issue 13, benchmarks/redis_clients.py, in its own
process): the gateway's pipelined Redis client against redis-py, coredis and valkey-glide on the
`reserve` script, calls/s at 64 concurrent calls and one connection's p50/p99, side by side, on the
bench's Redis (GATEWAY_REDIS_URL) and, when a cluster is given (--redis-cluster-url, default
BENCH_REDIS_CLUSTER_URL; or GATEWAY_REDIS_URL itself lists several addresses), on the cluster; medians
of interleaved rounds (about 1.5 minutes per topology). Reported, not gated; `--redis-clients-rounds 0`
skips it.

Then `redis_cost` (issue 23, benchmarks/redis_cost.py, in its own process): Redis commands, CPU and bytes
kept per accepted transaction, single and bulk, of the gateway at commit 0304ead against the working tree,
each on a Redis of its own, in alternating rounds (`--redis-cost-rounds`, 0 skips it;
`--redis-cost-transactions`); its table goes to OUT/redis-cost-<timestamp>.md and is gated on
targets.toml's [redis_cost].

The pieces: servers.py (the servers measured), load.py (Locust and wrk), phases.py (the plan and the
phases), report.py (the machine, the plot, the summary); the gates against targets.toml are here.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import tomllib
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.phases import (
    SMOKE,
    Plan,
    alternating,
    bulk_phase,
    measure_server,
    partners_ab,
    redis_clients_phase,
    redis_targets,
    soak,
)
from benchmarks.report import machine, plot, print_summary
from benchmarks.servers import Contender, cluster_env, servers
from gateway.kafka.producer import ensure_topics
from gateway.settings import Settings

HERE = Path(__file__).resolve().parent

Verdicts = list[dict[str, Any]]


def verdict(name: str, measured: Any, limit: float, higher_is_better: bool, unit: str) -> dict[str, Any]:
    """One gate of the report: a target, what was measured against its limit, and whether it passed
    (nothing measured is a miss)."""
    passed = measured is not None and (measured >= limit if higher_is_better else measured <= limit)
    return {"target": name, "measured": measured, "limit": limit, "unit": unit, "passed": passed}


def gates(report: dict[str, Any], targets: dict[str, Any]) -> Verdicts:
    """Every target of targets.toml against what was measured."""
    found = report["servers"]
    gateway, ceiling = found.get("gateway", {}), found.get("ceiling", {})
    verdicts = [
        *throughput_gates(report.get("ratios", {}), targets["throughput"]),
        *added_latency_gates(gateway, ceiling, targets["added_latency"]),
        *steady_gates(gateway, ceiling, targets["steady"], targets["added_latency"]),
        *micro_gates(report.get("micro", {}).get("valid", {}), targets["micro"]),
        *partners_gates(report.get("partners", {}), targets["partners"]),
        *bulk_gates(report.get("bulk", {}), targets["bulk"]),
        *memory_gates(report.get("soak", {}), targets["memory"]),
    ]
    if "cost" in report:
        from benchmarks.cost import gates as cost_gates

        verdicts += cost_gates(report["cost"], targets["cost"])
    if "redis_cost" in report:
        from benchmarks.redis_cost import gates as redis_cost_gates

        verdicts += redis_cost_gates(report["redis_cost"])
    return verdicts


def throughput_gates(ratios: dict[str, Any], t: dict[str, Any]) -> Verdicts:
    """The gateway's best throughput against the peer's and the ceiling's."""
    return [
        verdict("throughput vs peer", ratios.get("gateway_over_peer"), t["min_ratio_to_peer"], True, "x"),
        verdict("throughput vs ceiling", ratios.get("gateway_over_ceiling"), t["min_fraction_of_ceiling"], True,
                "fraction"),
    ]  # fmt: skip


def added_latency_us(
    gateway: dict[str, Any],
    ceiling: dict[str, Any],
    phase: str,
    scenario: str,
    percentile: str,
    base: str = "one_connection_new",
) -> float | None:
    """Gateway minus ceiling, Locust both, this run (µs); the ceiling answers every POST alike."""
    ours = gateway.get(phase, {}).get("latency_us", {}).get(scenario, {}).get(percentile)
    theirs = ceiling.get(base, {}).get("latency_us", {}).get("new", {}).get(percentile)
    return None if ours is None or theirs is None else ours - theirs


def added_latency_gates(gateway: dict[str, Any], ceiling: dict[str, Any], t: dict[str, Any]) -> Verdicts:
    """What the gateway adds to the ceiling's latency on one connection, new and replayed."""
    new = added_latency_us(gateway, ceiling, "one_connection_new", "new", "p50")
    replay = added_latency_us(gateway, ceiling, "one_connection_replay", "replay", "p50")
    return [
        verdict("one connection, new, p50 added", _ms(new), t["new_p50_ms"], False, "ms"),
        verdict("one connection, replay, p50 added", _ms(replay), t["replay_p50_ms"], False, "ms"),
    ]


def steady_gates(
    gateway: dict[str, Any], ceiling: dict[str, Any], t: dict[str, Any], added: dict[str, Any]
) -> Verdicts:
    """The steady rate: its added p99, its errors, its p99.9 against the ceiling's, and the rate held."""
    steady = gateway.get("steady", {})
    p99 = added_latency_us(gateway, ceiling, "steady", "new", "p99", "steady")
    ratio = _ratio(steady_p999(gateway), steady_p999(ceiling))
    return [
        verdict(f"steady {t['rate']}/s, p99 added", _ms(p99), added["steady_p99_ms"], False, "ms"),
        verdict(f"steady {t['rate']}/s, errors", steady.get("errors"), t["max_errors"], False, "requests"),
        verdict(f"steady {t['rate']}/s, p99.9 / ceiling's", ratio, t["max_p999_over_ceiling"], False, "x"),
        verdict(f"steady {t['rate']}/s, rate held", steady.get("rps"), t["rate"] * 0.95, True, "requests/s"),
    ]


def micro_gates(micro: dict[str, Any], t: dict[str, Any]) -> Verdicts:
    """fastcore's validation and routing: its best time, and against Pydantic."""
    return [
        verdict("fastcore validate + route", micro.get("fastcore", {}).get("best_us"), t["max_us"], False, "µs"),
        verdict("fastcore vs Pydantic", micro.get("ratios", {}).get("pydantic_over_fastcore"),
                t["min_ratio_to_pydantic"], True, "x"),
    ]  # fmt: skip


def partners_gates(cost: dict[str, Any], t: dict[str, Any]) -> Verdicts:
    """What partners cost: the authenticated gateway against the open one."""
    return [
        verdict("throughput, authenticated / open", cost.get("throughput_ratio"), 1 - t["max_overhead"], True, "x"),
        verdict("one connection p50, authenticated / open", cost.get("p50_ratio"), 1 + t["max_overhead"], False,
                "x"),
    ]  # fmt: skip


def bulk_gates(bulk: dict[str, Any], t: dict[str, Any]) -> Verdicts:
    """Bulk submissions: the best size's rate, and a bulk of 500 at half that rate."""
    best = max((size["transactions_per_second"] for size in bulk.get("sizes", {}).values()), default=None)
    half = bulk.get("half_rate", {})
    p99 = half.get("latency_us", {}).get("bulk", {}).get("p99") if half.get("items") == 500 else None
    return [
        verdict("bulk, transactions/s (best size)", best, t["min_transactions_per_second"], True, "transactions/s"),
        verdict("bulk of 500 at half that rate, p99", _ms(p99), t["max_p99_ms_500"], False, "ms"),
        verdict("bulk of 500 at half that rate, errors", half.get("errors"), 0, False, "requests"),
    ]


def memory_gates(soak: dict[str, Any], t: dict[str, Any]) -> Verdicts:
    """The workers' resident memory over the soak."""
    growth = soak.get("growth")
    worst = max(growth.values()) if growth else None
    return [verdict("worker memory growth over the soak", worst, t["max_growth"], False, "fraction")]


def steady_p999(server: dict[str, Any]) -> float | None:
    return server.get("steady", {}).get("latency_us", {}).get("new", {}).get("p99.9")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def log(message: str) -> None:
    """Progress, on stdout, as it happens."""
    print(message, flush=True)


def argument_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="10 seconds, gateway only, no gating")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--servers", default="gateway,gateway-open,peer,ceiling")
    parser.add_argument("--soak-seconds", type=int, default=None, help="0 skips the soak")
    parser.add_argument("--targets", type=Path, default=HERE / "targets.toml")
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "8100")))
    parser.add_argument("--ab-rounds", type=int, default=5, help="rounds of the partners A/B (0 skips it)")
    parser.add_argument("--ab-only", action="store_true", help="only the partners A/B and its gates")
    parser.add_argument(
        "--cluster-rounds", type=int, default=3, help="rounds of single node against cluster (0 skips it)"
    )
    parser.add_argument(
        "--redis-clients-rounds", type=int, default=None, help="rounds of the Redis clients A/B (0 skips it)"
    )
    parser.add_argument("--cost-rounds", type=int, default=None, help="rounds of the CPU-per-transaction headline")
    parser.add_argument("--redis-cost-rounds", type=int, default=None, help="rounds of issue 23's (0 skips it)")
    parser.add_argument("--redis-cost-transactions", type=int, default=None, help="per mode, checkout and round")
    parser.add_argument(
        "--redis-cluster-url",
        default=os.environ.get("BENCH_REDIS_CLUSTER_URL"),
        help="a Redis Cluster for the Redis clients A/B too (default: BENCH_REDIS_CLUSTER_URL)",
    )
    return parser


def prepare(args: argparse.Namespace) -> tuple[Plan, list[str], dict[str, Any]]:
    """The plan as the options amend it, the servers to measure, and the targets; wrk must be there."""
    plan = SMOKE if args.smoke else Plan()
    if args.soak_seconds is not None:
        plan.soak_seconds = args.soak_seconds
    if args.redis_clients_rounds is not None:
        plan.redis_clients_rounds = args.redis_clients_rounds
    if args.cost_rounds is not None:
        plan.cost_rounds = args.cost_rounds
    if args.redis_cost_rounds is not None:
        plan.redis_cost_rounds = args.redis_cost_rounds
    plan.redis_cost_transactions = args.redis_cost_transactions or plan.redis_cost_transactions
    names = ["gateway"] if args.smoke else args.servers.split(",")
    targets = tomllib.loads(args.targets.read_text())
    plan.steady_rate = targets["steady"]["rate"] if not args.smoke else plan.steady_rate
    if (plan.wrk_seconds or plan.cost_rounds) and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (deploy/bench.sh installs it from apt)")
    return plan, names, targets


def side_by_side(
    args: argparse.Namespace,
    plan: Plan,
    names: list[str],
    contenders: dict[str, Contender],
    settings: Settings,
    scratch: str,
    report: dict[str, Any],
) -> None:
    """The phases that alternate servers: the cost headline, the partners A/B, one node against cluster."""
    if plan.cost_rounds and not args.ab_only:
        from benchmarks import cost

        log(f"cost: CPU per accepted transaction, {plan.cost_rounds} interleaved rounds")
        headline = {name: contenders[name] for name in names if name in cost.SERVERS}
        report["cost"] = cost.phase(headline, plan.cost_rounds, plan.cost_seconds, settings, log)
    if args.ab_rounds and not args.smoke and {"gateway", "gateway-open"} <= set(names):
        log(f"partners A/B: authenticated and open gateway, alternating, {args.ab_rounds} rounds")
        report["partners_ab"] = partners_ab(contenders["gateway"], contenders["gateway-open"], args.ab_rounds, scratch)
    if args.cluster_rounds and not args.smoke and cluster_env() and not args.ab_only:
        log(f"cluster: the open gateway on one node and on the cluster, alternating, {args.cluster_rounds} rounds")
        report["cluster"] = alternating(
            contenders["gateway-cluster"], contenders["gateway-open"], args.cluster_rounds, scratch
        )


def one_at_a_time(
    plan: Plan, names: list[str], contenders: dict[str, Contender], scratch: str, report: dict[str, Any]
) -> None:
    """Each server alone through the phases; the gateway's bulk phase and soak after its own."""
    for name in names:
        server = contenders[name]
        log(f"{name}: starting")
        server.start(Path(scratch))
        try:
            report["servers"][name] = measure_server(server, plan, log)
            if name == "gateway" and plan.bulk_sizes:
                single = report["servers"]["gateway"]["max_sustained_rps"]
                report["bulk"] = bulk_phase(server, plan, single, log)
            if name == "gateway" and plan.soak_seconds:
                rate = report["servers"]["gateway"]["max_sustained_rps"] / 2
                log(f"  gateway: soak at {rate:.0f}/s for {plan.soak_seconds} s")
                report["soak"] = soak(server, rate, plan.soak_seconds)
        finally:
            server.stop()


def without_servers(
    args: argparse.Namespace, plan: Plan, settings: Settings, stamp: str, report: dict[str, Any]
) -> None:
    """With no server running: fastcore's micro-benchmark, the Redis clients A/B and issue 23's Redis cost."""
    log("micro-benchmark")
    from benchmarks.micro_fastcore import measure

    report["micro"] = measure(plan.micro_number)
    if plan.redis_clients_rounds:
        single, cluster = redis_targets(settings.redis_url, args.redis_cluster_url)
        report["redis_clients"] = redis_clients_phase(plan, single, cluster, log)
    if plan.redis_cost_rounds:
        from benchmarks import redis_cost

        path = args.out / f"redis-cost-{stamp}.json"
        rounds, transactions = plan.redis_cost_rounds, plan.redis_cost_transactions
        report["redis_cost"] = redis_cost.phase(rounds, transactions, path, args.targets, log)


def conclude(args: argparse.Namespace, targets: dict[str, Any], report: dict[str, Any]) -> None:
    """The ratios between servers, what partners cost, the gates and the verdict."""
    best = {n: r["max_sustained_rps"] for n, r in report["servers"].items()}
    if "gateway" in best:
        report["ratios"] = {
            f"gateway_over_{other}": round(best["gateway"] / best[other], 3)
            for other in ("peer", "ceiling", "gateway-open")
            if best.get(other)
        }
    report["partners"] = report.get("partners_ab", {}).get("summary", {})
    report["gates"] = [] if args.smoke else gates(report, targets)
    if args.ab_only:
        report["gates"] = [g for g in report["gates"] if "authenticated / open" in g["target"]]
    report["verdict"] = "smoke" if args.smoke else ("pass" if all(g["passed"] for g in report["gates"]) else "fail")


def main() -> int:
    """The whole bench; the report, its plot and summary; 0 when every gate passed (or a smoke run)."""
    args = argument_parser().parse_args()
    plan, names, targets = prepare(args)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "machine": machine(),
        "plan": asdict(plan),
        "servers": {},
    }
    settings = Settings.from_env()
    ensure_topics(msgspec.structs.replace(settings, topic_prefix="peer."))  # the peer writes to its own topics
    with tempfile.TemporaryDirectory() as scratch:
        contenders = servers(os.cpu_count() or 1, args.port_base, Path(scratch))
        side_by_side(args, plan, names, contenders, settings, scratch, report)
        one_at_a_time(plan, [] if args.ab_only else names, contenders, scratch, report)
    if not args.ab_only:
        without_servers(args, plan, settings, stamp, report)
    conclude(args, targets, report)
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1))
    if not args.ab_only:
        plot(report, args.out / f"{stamp}.png")
    print_summary(report, json_path)
    return 0 if report["verdict"] in ("pass", "smoke") else 1


if __name__ == "__main__":
    sys.exit(main())
