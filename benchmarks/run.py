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
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import msgspec
from hdrh.histogram import HdrHistogram

from gateway.kafka.producer import ensure_topics
from gateway.partners.registry import new_key
from gateway.settings import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
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


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    """One of the three contenders: how to start it, and where it listens."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    stateful: bool = True  # answers replays with 200 and invalid requests with 422
    authorization: str = ""  # the Authorization header every request of the load carries
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "wb")  # noqa: SIM115 (lives as long as the process)
        self.process = subprocess.Popen(
            self.command, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited at start-up; see {log.name}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready in 60 s; see {log.name}")

    def workers(self) -> list[int]:
        """Process ids of the worker processes (children of the server's main process)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# the launcher finds Granian on PATH: this interpreter's first
LAUNCHER_ENV = {"PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
# a gateway's operations listener (/metrics) is this far above its port
OPS_PORT_OFFSET = 100


def bench_registry(directory: Path) -> tuple[Path, str]:
    """A registry with one partner whose limit (GCRA, checked on every request) the load never reaches;
    its path and the partner's key."""
    key, digest = new_key()
    path = directory / "partners.toml"
    path.write_text(
        f'[partners.bench]\nrate = 1000000\nburst = 1000000\nkeys = [{{ id = "bench", sha256 = "{digest}" }}]\n'
    )
    return path, f"Bearer {key}"


def cluster_env() -> dict[str, str]:
    """The GATEWAY_* variables of the cluster stack (deploy/bench.sh puts `STACK=cluster deploy/stack.sh
    env` in BENCH_CLUSTER_ENV); empty when there is none."""
    return dict(line.split("=", 1) for line in os.environ.get("BENCH_CLUSTER_ENV", "").splitlines() if "=" in line)


def gateway_command(port: int, workers: int) -> list[str]:
    """The gateway as `make run` and the image start it, the launcher (`python -m gateway serve`: a worker
    that dies is replaced, and the rest of Granian's options), on loopback and quieter."""
    launcher = [str(BIN / "python"), "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return [*launcher, "--workers", str(workers), "--log-level", "warning"]


def granian_command(workers: int) -> list[str]:
    """Granian serving another ASGI app (the ceiling) on loopback with `workers` workers (the port and app
    follow)."""
    command = [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--workers", str(workers)]
    return [*command, "--no-ws", "--log-level", "warning"]


def servers(workers: int, port_base: int, scratch: Path) -> dict[str, Server]:
    """The gateway (authenticated, and open), the peer (FastAPI, Pydantic, uvicorn, redis.asyncio,
    aiokafka) and the ceiling."""
    ttl = {"GATEWAY_IDEMPOTENCY_TTL_SECONDS": "300"}  # keys of a run expire instead of filling Redis
    granian = granian_command(workers)
    registry, authorization = bench_registry(scratch)

    def gateway(name: str, port: int, env: dict[str, str], authorization: str = "") -> Server:
        command = gateway_command(port, workers)
        # an operations listener of its own, OPS_PORT_OFFSET above its port (several gateways run at once)
        metrics = {
            **LAUNCHER_ENV,
            "PROMETHEUS_MULTIPROC_DIR": str(scratch / f"metrics-{name}"),
            "GATEWAY_OPS_PORT": str(port + OPS_PORT_OFFSET),
        }
        return Server(name, command, port, "/ready", {**ttl, **metrics, **env}, authorization=authorization)

    return {
        "gateway": gateway("gateway", port_base + 1, {"GATEWAY_PARTNERS_FILE": str(registry)}, authorization),
        "gateway-open": gateway("gateway-open", port_base + 4, {}),
        # the open gateway again, on the cluster stack (BENCH_CLUSTER_ENV, set by deploy/bench.sh)
        "gateway-cluster": gateway("gateway-cluster", port_base + 5, cluster_env()),
        "peer": Server(
            "peer",
            [
                str(BIN / "uvicorn"),
                "benchmarks.peers.fastapi_peer:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port_base + 2),
                "--workers",
                str(workers),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            port_base + 2,
            "/docs",
            {**ttl, "PEER_TOPIC_PREFIX": "peer."},
        ),
        "ceiling": Server(
            "ceiling",
            [*granian, "--port", str(port_base + 3), "benchmarks.peers.bare_granian:app"],
            port_base + 3,
            "/",
            stateful=False,
        ),
    }


# -- load -----------------------------------------------------------------------------------------


def percentiles_us(histogram: HdrHistogram) -> dict[str, float]:
    return {f"p{p:g}": float(histogram.get_value_at_percentile(p)) for p in PERCENTILES} | {
        "max": float(histogram.get_max_value()),
        "mean": round(histogram.get_mean_value(), 1),
    }


def curve(histogram: HdrHistogram) -> list[tuple[float, int]]:
    """(percentile, µs) points for the plot, denser towards the tail."""
    points = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99]
    return [(p, histogram.get_value_at_percentile(p)) for p in points]


def locust(
    url: str,
    users: int,
    seconds: int,
    mix: str,
    user_rps: float = 0,
    expect: int | None = None,
    auth: str = "",
    bulk_items: int = 100,
) -> dict[str, Any]:
    """One headless Locust run; exact latencies from its HDR files."""
    with tempfile.TemporaryDirectory() as hdr_dir:
        env = {**os.environ, "BENCH_MIX": mix, "BENCH_USER_RPS": str(user_rps), "BENCH_HDR_DIR": hdr_dir}
        env["BENCH_AUTHORIZATION"] = auth
        env["BENCH_BULK_ITEMS"] = str(bulk_items)
        if expect is not None:
            env["BENCH_EXPECT"] = str(expect)
        command = [
            str(BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless", "--host", url,
            "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "5",
            "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120, cwd=ROOT)
        documents = [json.loads(p.read_text()) for p in Path(hdr_dir).glob("hdr-*.json")]
    if not documents:
        raise SystemExit(f"Locust recorded nothing (exit {run.returncode}):\n{run.stderr[-3000:]}")
    latency: dict[str, HdrHistogram] = {}
    stages: dict[str, HdrHistogram] = {}
    errors: dict[str, int] = {}
    for document in documents:
        for target, encoded in ((latency, document["latency"]), (stages, document["stages"])):
            for name, text in encoded.items():
                histogram = HdrHistogram.decode(text.encode())
                if name in target:
                    target[name].add(histogram)
                else:
                    target[name] = histogram
        for name, count in document["errors"].items():
            errors[name] = errors.get(name, 0) + count
    first = min(d["first"] for d in documents)
    last = max(d["last"] for d in documents)
    measured = [n for n in latency if n != "seed"]
    ok = sum(latency[n].get_total_count() for n in measured)
    failed = sum(c for n, c in errors.items() if n != "seed")
    result = {
        "users": users,
        "seconds": round(last - first, 2),
        "requests": ok + failed,
        "errors": failed,
        "error_rate": failed / max(1, ok + failed),
        "rps": round((ok + failed) / max(1e-9, last - first), 1),
        "latency_us": {n: percentiles_us(latency[n]) for n in measured},
        "curve_us": {n: curve(latency[n]) for n in measured},
        "server_timing_us": {n: percentiles_us(h) for n, h in stages.items()},
    }
    if failed:
        sample = re.findall(r"(?m)^.*(?:expected|Error|error).*$", run.stdout + run.stderr)[:5]
        result["error_sample"] = sample
    return result


def wrk(
    url: str,
    connections: int,
    seconds: int,
    auth: str = "",
    bulk_items: int = 0,
    script_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """wrk with the new-transaction script (or, with `bulk_items`, bulk requests of that many; `script_env`,
    the script's other variables: BENCH_REPLAY): throughput and its latency percentiles (ms -> µs)."""
    command = ["wrk", "-t1" if connections == 1 else "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(HERE / "wrk_new_transactions.lua"), url]
    env = {**os.environ, "BENCH_AUTHORIZATION": auth, "BENCH_BULK_ITEMS": str(bulk_items), **(script_env or {})}
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, env=env).stdout
    units = {"us": 1, "ms": 1000, "s": 1_000_000}
    latency = {
        f"p{p}": float(value) * units[unit]
        for p, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if bulk_items:  # a 207 is a 2xx to wrk: the script counts every answer but 200 (all accepted)
        errors = int(re.search(r"bulk non-200: (\d+)", out).group(1))  # type: ignore[union-attr]
    errors += sum(map(int, socket_errors.groups())) if socket_errors else 0
    return {
        "connections": connections,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "latency_us": latency,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / max(1, requests),
    }


def rss_sampler(server: Server, samples: list[tuple[float, dict[int, int]]], stop: threading.Event) -> None:
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


# -- phases ---------------------------------------------------------------------------------------


def measure_server(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
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


def bulk_phase(server: Server, plan: Plan, single_rps: float, log: Any) -> dict[str, Any]:
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


def soak(server: Server, rate: float, seconds: int) -> dict[str, Any]:
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


# -- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    memory = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    packages = ("granian", "litestar", "msgspec", "confluent-kafka", "redis", "hiredis", "fastapi", "pydantic")
    packages += ("uvicorn", "aiokafka", "locust", "coredis", "valkey-glide")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu.group(1) if cpu else "unknown",
        "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: metadata.version(name) for name in packages if _installed(name)},
        "note": "load generator, Redis, Kafka and the server share these cores",
    }


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def verdict(name: str, measured: Any, limit: float, higher_is_better: bool, unit: str) -> dict[str, Any]:
    """One gate of the report: a target, what was measured against its limit, and whether it passed
    (nothing measured is a miss)."""
    passed = measured is not None and (measured >= limit if higher_is_better else measured <= limit)
    return {"target": name, "measured": measured, "limit": limit, "unit": unit, "passed": passed}


def gates(report: dict[str, Any], targets: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of targets.toml against what was measured."""
    found = report["servers"]
    verdicts: list[dict[str, Any]] = []

    def gate(name: str, measured: float | None, target: float, higher_is_better: bool, unit: str) -> None:
        verdicts.append(verdict(name, measured, target, higher_is_better, unit))

    gateway = found.get("gateway", {})
    ratios = report.get("ratios", {})
    t = targets["throughput"]
    gate("throughput vs peer", ratios.get("gateway_over_peer"), t["min_ratio_to_peer"], True, "x")
    gate("throughput vs ceiling", ratios.get("gateway_over_ceiling"), t["min_fraction_of_ceiling"], True, "fraction")
    t = targets["added_latency"]
    ceiling = found.get("ceiling", {})

    def added(phase: str, scenario: str, percentile: str, base: str = "one_connection_new") -> float | None:
        """Gateway minus ceiling, Locust both, this run (µs); the ceiling answers every POST alike."""
        ours = gateway.get(phase, {}).get("latency_us", {}).get(scenario, {}).get(percentile)
        theirs = ceiling.get(base, {}).get("latency_us", {}).get("new", {}).get(percentile)
        return None if ours is None or theirs is None else ours - theirs

    gate("one connection, new, p50 added", _ms(added("one_connection_new", "new", "p50")), t["new_p50_ms"], False, "ms")
    gate("one connection, replay, p50 added", _ms(added("one_connection_replay", "replay", "p50")), t["replay_p50_ms"],
         False, "ms")  # fmt: skip
    t = targets["steady"]
    steady = gateway.get("steady", {})
    gate(f"steady {t['rate']}/s, p99 added", _ms(added("steady", "new", "p99", "steady")),
         targets["added_latency"]["steady_p99_ms"], False, "ms")  # fmt: skip
    gate(f"steady {t['rate']}/s, errors", steady.get("errors"), t["max_errors"], False, "requests")
    ratio = _ratio(steady_p999(gateway), steady_p999(ceiling))
    gate(f"steady {t['rate']}/s, p99.9 / ceiling's", ratio, t["max_p999_over_ceiling"], False, "x")
    achieved = steady.get("rps")
    gate(f"steady {t['rate']}/s, rate held", achieved, t["rate"] * 0.95, True, "requests/s")
    t = targets["micro"]
    micro = report.get("micro", {}).get("valid", {})
    gate("fastcore validate + route", micro.get("fastcore", {}).get("best_us"), t["max_us"], False, "µs")
    gate("fastcore vs Pydantic", micro.get("ratios", {}).get("pydantic_over_fastcore"), t["min_ratio_to_pydantic"],
         True, "x")  # fmt: skip
    t = targets["partners"]
    cost = report.get("partners", {})
    gate("throughput, authenticated / open", cost.get("throughput_ratio"), 1 - t["max_overhead"], True, "x")
    gate("one connection p50, authenticated / open", cost.get("p50_ratio"), 1 + t["max_overhead"], False, "x")
    t = targets["bulk"]
    bulk = report.get("bulk", {})
    best = max((size["transactions_per_second"] for size in bulk.get("sizes", {}).values()), default=None)
    gate("bulk, transactions/s (best size)", best, t["min_transactions_per_second"], True, "transactions/s")
    half = bulk.get("half_rate", {})
    p99 = half.get("latency_us", {}).get("bulk", {}).get("p99") if half.get("items") == 500 else None
    gate("bulk of 500 at half that rate, p99", _ms(p99), t["max_p99_ms_500"], False, "ms")
    gate("bulk of 500 at half that rate, errors", half.get("errors"), 0, False, "requests")
    t = targets["memory"]
    growth = report.get("soak", {}).get("growth")
    gate("worker memory growth over the soak", max(growth.values()) if growth else None, t["max_growth"], False,
         "fraction")  # fmt: skip
    if "cost" in report:
        from benchmarks.cost import gates as cost_gates

        verdicts += cost_gates(report["cost"], targets["cost"])
    if "redis_cost" in report:
        from benchmarks.redis_cost import gates as redis_cost_gates

        verdicts += redis_cost_gates(report["redis_cost"])
    return verdicts


def alternating(first: Server, second: Server, rounds: int, scratch: str) -> dict[str, Any]:
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


def partners_ab(authenticated: Server, open_: Server, rounds: int, scratch: str) -> dict[str, Any]:
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


def steady_p999(server: dict[str, Any]) -> float | None:
    return server.get("steady", {}).get("latency_us", {}).get("new", {}).get("p99.9")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def _plot_cost(medians: dict[str, dict[str, Any]], cpu: Any, throughput: Any) -> None:
    """The headline: whole-stack CPU per transaction by part (stacked), and throughput, per server and phase."""
    labels = [f"{name}\n{phase}" for name, phases in medians.items() for phase in phases]
    results = [result for phases in medians.values() for result in phases.values()]
    bottom = [0.0] * len(results)
    for part in ("server", "redis", "kafka", "postgres"):
        heights = [r["cpu_us"].get(part, 0.0) for r in results]
        if any(heights):
            cpu.bar(labels, heights, bottom=bottom, label=part)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    cpu.set_ylabel("µs of CPU per accepted transaction")
    cpu.set_title("Whole stack's CPU per transaction (load generator apart)")
    throughput.bar(labels, [r["transactions_per_second"] for r in results], color="tab:green")
    throughput.set_ylabel("transactions/s (wrk)")
    throughput.set_yscale("log")
    throughput.set_title("Throughput in the same rounds")
    for axis in (cpu, throughput):
        axis.tick_params(axis="x", labelsize=7)
        axis.grid(True, axis="y", alpha=0.3)
    if results:
        cpu.legend()


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency percentile curves, throughput steps and the soak's memory, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    colors = {"gateway": "tab:blue", "gateway-open": "tab:cyan", "peer": "tab:red", "ceiling": "tab:gray"}
    for axis, phase, title in (
        (axes[0][0], "one_connection_new", "One connection, new transactions"),
        (axes[0][1], "steady", f"Steady {report['plan']['steady_rate']}/s, new transactions"),
    ):
        for name, result in report["servers"].items():
            points = result.get(phase, {}).get("curve_us", {}).get("new")
            if points:
                xs = [1 / (1 - p / 100) for p, _ in points]
                axis.plot(xs, [us / 1000 for _, us in points], marker="o", label=name, color=colors.get(name))
        axis.set_xscale("log")
        axis.set_xticks([2, 10, 100, 1000, 10000], ["p50", "p90", "p99", "p99.9", "p99.99"])
        axis.set_ylabel("latency, ms")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    axis = axes[1][0]
    for name, result in report["servers"].items():
        steps = result.get("steps", [])
        axis.plot([s["users"] for s in steps], [s["rps"] for s in steps], marker="o", label=f"{name} (Locust)",
                  color=colors.get(name))  # fmt: skip
        steps = result.get("wrk_steps", [])
        axis.plot([s["connections"] for s in steps], [s["rps"] for s in steps], marker="s", linestyle="--",
                  label=f"{name} (wrk)", color=colors.get(name))  # fmt: skip
    axis.set_xscale("log", base=2)
    axis.set_xlabel("closed-loop users / connections")
    axis.set_ylabel("requests/s (new transactions)")
    axis.set_title("Throughput as load steps up")
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis = axes[1][1]
    samples = report.get("soak", {}).get("rss_kib", [])
    pids = sorted({pid for _, sizes in samples for pid in sizes})
    for pid in pids:
        axis.plot([t for t, s in samples if pid in s], [s[pid] / 1024 for _, s in samples if pid in s],
                  label=f"worker {pid}")  # fmt: skip
    axis.set_xlabel("seconds")
    axis.set_ylabel("resident memory, MiB")
    axis.set_title("Gateway workers during the soak" if pids else "Soak not run")
    axis.grid(True, alpha=0.3)
    if pids:
        axis.legend()
    _plot_cost(report.get("cost", {}).get("medians", {}), axes[2][0], axes[2][1])
    fig.suptitle(f"Settlement gateway benchmark, {report['started']}, {report['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
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
    args = parser.parse_args()
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

    def log(message: str) -> None:
        print(message, flush=True)

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
        if plan.cost_rounds and not args.ab_only:
            from benchmarks import cost

            log(f"cost: CPU per accepted transaction, {plan.cost_rounds} interleaved rounds")
            headline = {name: contenders[name] for name in names if name in cost.SERVERS}
            report["cost"] = cost.phase(headline, plan.cost_rounds, plan.cost_seconds, settings, log)
        if args.ab_rounds and not args.smoke and {"gateway", "gateway-open"} <= set(names):
            log(f"partners A/B: authenticated and open gateway, alternating, {args.ab_rounds} rounds")
            report["partners_ab"] = partners_ab(
                contenders["gateway"], contenders["gateway-open"], args.ab_rounds, scratch
            )
        if args.cluster_rounds and not args.smoke and cluster_env() and not args.ab_only:
            log(f"cluster: the open gateway on one node and on the cluster, alternating, {args.cluster_rounds} rounds")
            report["cluster"] = alternating(
                contenders["gateway-cluster"], contenders["gateway-open"], args.cluster_rounds, scratch
            )
        if args.ab_only:
            names = []
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
    if not args.ab_only:
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
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1))
    if not args.ab_only:
        plot(report, args.out / f"{stamp}.png")
    print_summary(report, json_path)
    return 0 if report["verdict"] in ("pass", "smoke") else 1


def print_summary(report: dict[str, Any], path: Path) -> None:
    print(f"\nreport: {path}" + (f" (plot: {path.with_suffix('.png')})" if path.with_suffix(".png").exists() else ""))
    headline = report.get("cost")
    if headline:
        print("CPU per accepted transaction (whole stack, /proc; medians of interleaved rounds):")
        print(headline["table"])
    print(
        f"{'server':<12} {'max rps':>9} {'1-conn p50/p99 µs':>20} {'steady p50/p99/p99.9 µs':>26} {'wrk max rps':>12}"
    )
    for name, r in report["servers"].items():
        one = r["one_connection_new"]["latency_us"].get("new", {})
        steady = r["steady"]["latency_us"].get("new", {})
        wrk_rps = max((w["rps"] for w in r.get("wrk_steps", [])), default="-")
        print(
            f"{name:<12} {r['max_sustained_rps']:>9.0f} {one.get('p50', 0):>9.0f} / {one.get('p99', 0):<8.0f}"
            f" {steady.get('p50', 0):>8.0f} / {steady.get('p99', 0):>6.0f} / {steady.get('p99.9', 0):<8.0f}"
            f" {wrk_rps:>12}"
        )
    for name, ratio in report.get("ratios", {}).items():
        print(f"{name}: {ratio}")
    cost = report.get("partners")
    if cost:  # the A/B rounds' medians (wrk): 128 connections' throughput, one connection's p50
        rps, p50 = cost["max_rps"], cost["one_connection_new_p50_us"]
        print(
            f"partners (authenticated / open): max rps {rps['authenticated']:.0f} / {rps['open']:.0f} = "
            f"{cost['throughput_ratio']}; one-connection p50 µs {p50['authenticated']:.0f} / {p50['open']:.0f} = "
            f"{cost['p50_ratio']}"
        )
    bulk = report.get("bulk")
    if bulk:
        print(f"bulk: single endpoint {bulk['single_transactions_per_second']:.0f} transactions/s", end="")
        for items, run in bulk["sizes"].items():
            latency = run["latency_us"].get("bulk", run["latency_us"])  # Locust per scenario, wrk flat
            print(
                f"; {items}/request {run['transactions_per_second']:.0f}/s (p99 {latency.get('p99', 0):.0f} µs)", end=""
            )
        half = bulk.get("half_rate", {}).get("latency_us", {}).get("bulk", {})
        print(f"; half rate p50/p99 µs {half.get('p50', 0):.0f} / {half.get('p99', 0):.0f}" if half else "")
    cluster = report.get("cluster")
    if cluster:
        one, many = cluster["medians"]["gateway-open"], cluster["medians"]["gateway-cluster"]
        print(
            f"cluster (open gateway, medians): wrk 128 conn. {many['rps']:.0f}/s on the cluster against "
            f"{one['rps']:.0f}/s on one node (x{cluster['ratios']['throughput_ratio']}); one connection p50 "
            f"{many['p50_us']:.0f} / {one['p50_us']:.0f} µs"
        )
    clients = report.get("redis_clients")
    if clients:
        print("redis clients A/B (issue 13), medians of the rounds:")
        print(clients.get("table") or f"  not run: {clients.get('error')}")
        for line in clients.get("verdicts", []):
            print(f"- {line}")
    cost = report.get("redis_cost")
    if cost:
        print("redis cost per transaction (issue 23), before | after, medians of the rounds:")
        print(cost.get("table") or f"  not run: {cost.get('error')}")
    for g in report["gates"]:
        print(f"{'PASS' if g['passed'] else 'MISS'}  {g['target']}: {g['measured']} (limit {g['limit']} {g['unit']})")
    print(f"verdict: {report['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
