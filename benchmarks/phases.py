"""The phases of `make bench` (benchmarks/run.py) and their plan: every phase against one running server
(one connection, replays, a steady rate, closed-loop steps, wrk), the gateway's bulk endpoint and soak,
two gateways side by side in alternating rounds (the partners A/B, one node against the cluster), and the
Redis clients A/B in a process of its own."""

import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load import locust, wrk
from benchmarks.servers import Contender
from tests.servers import ROOT

MAX_ERROR_RATE = 0.001  # a step counts as sustained below 0.1% errors


@dataclass
class Plan:
    """Durations and loads of every phase."""

    warmup_seconds: int = 10  # also warms the broker's JIT for whichever server goes first
    one_connection_seconds: int = 15
    replay_seconds: int = 10
    steady_rate: int = 1000
    steady_users: int = 20
    steady_seconds: int = 20
    steps: tuple[int, ...] = (4, 16, 48, 96)
    step_seconds: int = 12
    wrk_seconds: int = 10
    wrk_connections: tuple[int, ...] = (16, 64, 128, 256)
    soak_seconds: int = 600
    micro_number: int = 200_000
    bulk_sizes: tuple[int, ...] = (100, 500, 1000)
    bulk_seconds: int = 10
    bulk_connections: int = 8
    redis_clients_rounds: int = 3
    redis_clients_seconds: float = 3.0  # each of the two measurements, per client, topology and round
    redis_cost_rounds: int = 3
    redis_cost_transactions: int = 100_000  # single and bulk, each checkout, each round
    cost_rounds: int = 3  # the headline (benchmarks/cost.py): interleaved rounds of every server's phases
    cost_seconds: int = 10
    smoke: bool = False


SMOKE = Plan(
    warmup_seconds=1, one_connection_seconds=2, replay_seconds=2, steady_rate=100, steady_users=4,
    steady_seconds=2, steps=(8,), step_seconds=2, wrk_seconds=0, soak_seconds=0, micro_number=2000,
    bulk_sizes=(100,), bulk_seconds=2, bulk_connections=2, redis_clients_rounds=1, redis_clients_seconds=0.3,
    redis_cost_rounds=0, cost_rounds=1, cost_seconds=2, smoke=True,
)  # fmt: skip


def rss_sampler(server: Contender, samples: list[tuple[float, dict[int, int]]], stop: threading.Event) -> None:
    """Every 5 s: the resident memory (KiB) of each worker process."""
    started = time.monotonic()
    while not stop.wait(5):
        sizes = {}
        for pid in server.workers():
            status = Path(f"/proc/{pid}/status")
            if status.exists():
                match = re.search(r"VmRSS:\s+(\d+) kB", status.read_text())
                if match:
                    sizes[pid] = int(match.group(1))
        samples.append((round(time.monotonic() - started, 1), sizes))


def measure_server(server: Contender, plan: Plan, log: Any) -> dict[str, Any]:
    """Every phase against one running server."""
    expect = None if server.stateful else 202
    result: dict[str, Any] = {}
    auth = server.authorization
    locust(server.url, 4, plan.warmup_seconds, "new=1", expect=expect, auth=auth)
    log(f"  {server.name}: one connection, new transactions")
    result["one_connection_new"] = locust(server.url, 1, plan.one_connection_seconds, "new=1", expect=expect, auth=auth)
    if server.stateful:
        log(f"  {server.name}: one connection, replays")
        result["one_connection_replay"] = locust(server.url, 1, plan.replay_seconds, "replay=1", auth=auth)
    log(f"  {server.name}: steady {plan.steady_rate}/s")
    result["steady"] = locust(
        server.url, plan.steady_users, plan.steady_seconds, "new=1", plan.steady_rate / plan.steady_users, expect, auth
    )
    steps = []
    for users in plan.steps:
        log(f"  {server.name}: {users} users, closed loop")
        step = locust(server.url, users, plan.step_seconds, "new=1", expect=expect, auth=auth)
        steps.append(step)
        if step["error_rate"] >= MAX_ERROR_RATE:
            break
    result["steps"] = steps
    if plan.wrk_seconds:
        log(f"  {server.name}: wrk, one connection and stepped connections")
        result["wrk_one_connection"] = wrk(server.url, 1, plan.wrk_seconds, auth)
        result["wrk_steps"] = [wrk(server.url, c, plan.wrk_seconds, auth) for c in plan.wrk_connections]
    # The most capable load generator shows the server's capacity: Locust, being Python, may run out
    # of CPU before a fast server does.
    sustained = [s["rps"] for s in steps + result.get("wrk_steps", []) if s["error_rate"] < MAX_ERROR_RATE]
    result["max_sustained_rps"] = max(sustained, default=0.0)
    result["max_sustained_rps_locust"] = max((s["rps"] for s in steps if s["error_rate"] < MAX_ERROR_RATE), default=0.0)
    return result


def bulk_phase(server: Contender, plan: Plan, single_rps: float, log: Any) -> dict[str, Any]:
    """Transactions per second through the bulk endpoint, per bulk size (wrk, closed loop; Locust in the
    smoke), beside the single endpoint's best; then the latency of 500-transaction requests at half the
    rate the 500 size sustained (Locust, constant throughput)."""
    auth = server.authorization
    sizes: dict[str, Any] = {}
    for items in plan.bulk_sizes:
        log(f"  {server.name}: bulk requests of {items}, {plan.bulk_connections} connections")
        if plan.wrk_seconds:
            run = wrk(server.url, plan.bulk_connections, plan.bulk_seconds, auth, bulk_items=items)
        else:
            run = locust(server.url, plan.bulk_connections, plan.bulk_seconds, "bulk=1", auth=auth, bulk_items=items)
        run["transactions_per_second"] = round(run["rps"] * items * (1 - run["error_rate"]), 1)
        sizes[str(items)] = run
    result: dict[str, Any] = {"single_transactions_per_second": single_rps, "sizes": sizes}
    middle = "500" if "500" in sizes else str(plan.bulk_sizes[0])
    rate = sizes[middle]["transactions_per_second"] / 2 / int(middle)  # requests/s
    if rate > 0:
        users = max(1, min(8, round(rate)))
        log(f"  {server.name}: bulk requests of {middle} at half that rate ({rate:.1f}/s)")
        result["half_rate"] = locust(
            server.url, users, plan.bulk_seconds * 2, "bulk=1", rate / users, auth=auth, bulk_items=int(middle)
        )
        result["half_rate"]["items"] = int(middle)
    return result


def soak(server: Contender, rate: float, seconds: int) -> dict[str, Any]:
    """New transactions at `rate` for `seconds`, sampling every worker's resident memory."""
    samples: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_sampler, args=(server, samples, stop), daemon=True)
    sampler.start()
    users = 32
    try:
        load = locust(server.url, users, seconds, "new=1", rate / users, auth=server.authorization)
    finally:
        stop.set()
        sampler.join()
    growth = {}
    for pid in samples[-1][1] if samples else {}:
        series = [s[pid] for _, s in samples if pid in s]
        settled = series[len(series) // 10 : len(series) // 10 + 3] or series[:1]  # after the first tenth
        baseline = sorted(settled)[len(settled) // 2]
        growth[str(pid)] = round((series[-1] - baseline) / baseline, 4)
    return {"rate": rate, "load": load, "rss_kib": samples, "growth": growth}


def alternating(first: Contender, second: Contender, rounds: int, scratch: str) -> dict[str, Any]:
    """Two gateways side by side, measured so that the machine's drift cancels: both run at once (the
    idle one takes no CPU) and are measured in alternating rounds, each round one connection (wrk, p50)
    then 128 connections (wrk, throughput); medians over the rounds, and `first` over `second`."""
    for server in (first, second):
        server.start(Path(scratch))
    runs: dict[str, dict[str, list[float]]] = {s.name: {"p50_us": [], "rps": []} for s in (first, second)}
    try:
        for server in (first, second):  # warm both, the broker and Redis
            wrk(server.url, 64, 5, server.authorization)
        for round_ in range(rounds):
            for server in (first, second) if round_ % 2 == 0 else (second, first):
                one = wrk(server.url, 1, 5, server.authorization)
                many = wrk(server.url, 128, 8, server.authorization)
                if one["errors"] or many["errors"]:
                    raise SystemExit(f"A/B: {server.name} answered errors: {one['errors']} / {many['errors']}")
                runs[server.name]["p50_us"].append(one["latency_us"]["p50"])
                runs[server.name]["rps"].append(many["rps"])
    finally:
        for server in (first, second):
            server.stop()
    medians = {name: {k: statistics.median(v) for k, v in values.items()} for name, values in runs.items()}
    a, b = medians[first.name], medians[second.name]
    ratios = {
        "throughput_ratio": round(a["rps"] / max(1e-9, b["rps"]), 3),
        "p50_ratio": round(a["p50_us"] / max(1e-9, b["p50_us"]), 3),
    }
    return {"rounds": runs, "medians": medians, "ratios": ratios}


def partners_ab(authenticated: Contender, open_: Contender, rounds: int, scratch: str) -> dict[str, Any]:
    """What authentication and the rate limit cost: the authenticated and the open gateway, alternating."""
    result = alternating(authenticated, open_, rounds, scratch)
    auth, open_m = result["medians"][authenticated.name], result["medians"][open_.name]
    result["summary"] = {
        "max_rps": {"authenticated": auth["rps"], "open": open_m["rps"]},
        "one_connection_new_p50_us": {"authenticated": auth["p50_us"], "open": open_m["p50_us"]},
        **result.pop("ratios"),
    }
    return result


def redis_targets(redis_url: str, cluster_url: str | None) -> tuple[str | None, str | None]:
    """The single node and the cluster the Redis clients A/B runs on: the bench's Redis is the one or,
    when its URL lists several addresses, the other."""
    if "," in redis_url.partition("://")[2].partition("/")[0]:
        return None, redis_url
    return redis_url, cluster_url or None


def redis_clients_phase(plan: Plan, single: str | None, cluster: str | None, log: Any) -> dict[str, Any]:
    """Issue 13's A/B (benchmarks/redis_clients.py), in its own process (valkey-glide's Rust runtime
    stays out of this one); its report, or what went wrong."""
    command = [sys.executable, "-m", "benchmarks.redis_clients", "--rounds", str(plan.redis_clients_rounds)]
    command += ["--seconds", str(plan.redis_clients_seconds), "--warmup", "0.3" if plan.smoke else "1"]
    command += ["--single", single] if single else []
    command += ["--cluster", cluster] if cluster else []
    topologies = [name for name, url in (("single node", single), ("cluster", cluster)) if url]
    log(f"redis clients A/B (issue 13): {' and '.join(topologies)}, {plan.redis_clients_rounds} rounds")
    budget = plan.redis_clients_rounds * len(topologies) * 4 * 2 * plan.redis_clients_seconds + 180
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "redis_clients.json"
        try:
            run = subprocess.run(
                [*command, "--json", str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=budget
            )
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {budget:.0f} s"}
        if run.returncode or not out.exists():
            return {"error": f"exit {run.returncode}: {run.stdout[-2000:]}"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result
