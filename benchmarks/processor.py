"""The processor phase of `make bench`: catch-up rate, consumer lag under the gateway's intake, and the
latency of the status API at a steady rate, each with the CPU the stack spends per unit of work
(issue 25: benchmarks/cpu.py, user + system from /proc). Each run uses topics and a schema of its own.

    python -m benchmarks.processor [--events 200000] [--intake-seconds 20] [--status-rate 1000]
                                   [--phases catch_up,lag,status] [--targets FILE] [--out DIR]

1. catch-up: `--events` TransactionAccepted records are written to the window topics first; then one
   processor, in this process, folds them; events/s from the end of its first poll batch to its last
   fold, and the CPU per event from its subscription to its last fold: the processor (this process:
   nothing else runs in it meanwhile, and the database is asked how far the fold got only once the
   records read say it is done), PostgreSQL's processes and the Kafka broker, each in µs per event and
   summed (`stack`).
2. lag: a two-worker gateway takes new transactions from wrk's 64 connections as fast as it answers
   for `--intake-seconds` while the processor runs; every 0.25 s the lag (records in the topics not
   yet folded, from the database's offsets) is sampled; in seconds, lag / intake rate.
3. status: GET /api/v1/transactions/{id} of folded transactions at `--status-rate` per second
   (open loop, each request sent on its schedule) for 10 s; p50/p99/p99.9, and the CPU per answered GET
   of the gateway's processes, PostgreSQL and Redis (`stack`), the load generator (this process) apart
   (`load`). The same for /health at the same rate: the HTTP path alone, the ceiling.

Targets: targets.toml's [processor], each printed as PASS or MISS with its measured value and put in the
report's `gates`; the exit status is 1 when one is missed.
"""

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.cpu import StackMeter, per_answer_us
from benchmarks.report import save_phase
from benchmarks.run import verdict
from gateway.kafka.producer import ensure_topics
from gateway.settings import Settings
from processor.calendar import SettlementCalendar
from processor.metrics import ProcessorMetrics
from processor.service import Processor
from processor.settings import ProcessorSettings
from processor.store import SettlementStore
from settlement.events import (
    EVENT_ENCODER,
    Routing,
    Transaction,
    cloudevents_headers,
    event_time_ms,
    transaction_accepted,
)
from tests.servers import Server

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ("t0", "t1", "rtgs")
PHASES = ("catch_up", "lag", "status")


def _produce_backlog(settings: Settings, events: int) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 500_000}
    )
    for n in range(events):
        window = WINDOWS[n % 3]
        txn = Transaction(
            f"bench-{n}", f"{n % 9999 + 1}.{n % 100:02d}", "USD", "GBP", f"acct-{n % 97}", "dest", f"cp-{n % 5}",
            window, None,
        )  # fmt: skip
        routing = Routing(window, window, "2026-12-01", f"{window}-20261201-GBP", "requested")
        event = transaction_accepted("bench", f"k-{n}", txn, routing, "2026-11-30T10:00:00.000Z")
        while True:
            try:
                producer.produce(
                    settings.topic(window), EVENT_ENCODER.encode(event), txn.source_account.encode(),
                    headers=cloudevents_headers(event, None), timestamp=event_time_ms(event),
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def _folded(database: str, schema: str) -> int:
    with psycopg.connect(database, autocommit=True) as conn:
        return _folded_on(conn, schema)


def _ends(bootstrap: str, topics: list[str]) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for topic in topics
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        )
    finally:
        consumer.close()


def _stack(settings: Settings, parts: tuple[str, ...], **processes: int) -> StackMeter:
    """The processes doing a phase's work: the named parts of the local stack, and `processes` by pid."""
    stack = StackMeter.of_stack(settings.redis_url, settings.kafka_bootstrap, settings.database_url)
    meter = StackMeter({name: pids for name, pids in stack.parts.items() if name in parts})
    for name, pid in processes.items():
        meter = meter.with_part(name, pid)
    return meter


@contextmanager
def _cpu(meter: StackMeter) -> Iterator[dict[str, float]]:
    """CPU seconds per part over the block, and `load`: this process's own (the load generator)."""
    own = time.process_time()
    with meter.measure() as used:
        yield used
    used["load"] = time.process_time() - own


def _machine_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait): over a
    run, beside the parts', it shows what else took the shared cores (a latency percentile feels it)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def catch_up(env: dict[str, str], events: int) -> dict:
    gateway = Settings.from_env(env)
    ensure_topics(gateway)
    started = time.monotonic()
    _produce_backlog(gateway, events)
    produced = time.monotonic() - started
    settings = ProcessorSettings.from_env(env)
    store = SettlementStore(settings.database_url, settings.database_schema, SettlementCalendar.from_settings(settings))
    store.migrate()
    processor = Processor(settings, store, ProcessorMetrics(), time.time)
    processor.follow_registry()  # as run() does first: with GATEWAY_PARTNERS_FILE set, the webhook outbox too
    meter = _stack(gateway, ("postgres", "kafka"), processor=os.getpid())
    try:
        # CPU from the subscription on: the consumer fetches ahead of the fold (while the first batch
        # folds), so the broker's part starts there; joining the group meanwhile is mostly waiting
        with psycopg.connect(settings.database_url, autocommit=True) as progress, meter.measure() as used:
            processor.subscribe()
            first, read = _first_batch(processor)
            folded_before = _folded_on(progress, settings.database_schema)
            _fold_rest(processor, lambda: _folded_on(progress, settings.database_schema), events, read)
            seconds = time.monotonic() - first
    finally:
        processor.close()
        store.close()
    used.pop("load")  # nothing is reaped meanwhile: the processor is this process
    return {"events": events, "produce_seconds": round(produced, 2), "fold_seconds": round(seconds, 2),
            "events_per_second": round((events - folded_before) / seconds),  # after the first poll batch
            "cpu_us_per_event": per_answer_us(used, events)}  # fmt: skip


def _first_batch(processor: Processor) -> tuple[float, int]:
    """Fold until a poll batch brings records; when it was folded, and how many it read."""
    while not (read := processor.step(1.0)):
        pass
    return time.monotonic(), read


def _fold_rest(processor: Processor, folded: Callable[[], int], events: int, read: int) -> None:
    """Fold until the database holds all `events` (`read` of them read so far). It is asked only once the
    records read could be all of them, then at most twice a second: the asking is not the work measured."""
    asked = 0.0
    while True:
        read += processor.step(1.0)
        if read >= events and time.monotonic() - asked > 0.5:
            asked = time.monotonic()
            if folded() >= events:
                return


def _folded_on(conn: psycopg.Connection, schema: str) -> int:
    return int(conn.execute(f"SELECT coalesce(sum(next_offset), 0) FROM {schema}.consumed").fetchone()[0])  # type: ignore[index]


async def lag_under_intake(env: dict[str, str], seconds: float, tmp: Path) -> dict:
    settings = ProcessorSettings.from_env(env)
    with (tmp / "processor.log").open("ab") as log:
        processor = subprocess.Popen([sys.executable, "-m", "processor"], env=env, cwd=ROOT, stdout=log, stderr=log)
    server = Server({**env, "GATEWAY_PARTNER": "bench-intake", "E2E_LOG": str(tmp / "gateway.log"),
                     "GATEWAY_ACCESS_LOG": "false", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")})  # fmt: skip
    # wrk at 64 connections: the gateway's maximum intake (make bench installs wrk)
    load = await asyncio.create_subprocess_exec(
        "wrk", "-t2", "-c64", f"-d{int(seconds)}s", "-s", str(ROOT / "benchmarks" / "wrk_new_transactions.lua"),
        server.url, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    samples: list[int] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            ends = await asyncio.to_thread(_ends, settings.kafka_bootstrap, settings.topics)
            samples.append(ends - await asyncio.to_thread(_folded, settings.database_url, settings.database_schema))
        report = (await load.communicate())[0].decode()
    finally:
        server.stop()
    accepted = float(report.split("Requests/sec:")[1].split()[0]) * seconds if "Requests/sec:" in report else 0
    # after intake stops, how long until the processor has folded everything
    drained_at = time.monotonic()
    final = await asyncio.to_thread(_ends, settings.kafka_bootstrap, settings.topics)
    while await asyncio.to_thread(_folded, settings.database_url, settings.database_schema) < final:
        await asyncio.sleep(0.05)
    drain = time.monotonic() - drained_at
    processor.terminate()
    processor.wait(30)
    rate = accepted / seconds
    return {
        "intake_per_second": round(rate),
        "lag_records_max": max(samples),
        "lag_records_p50": int(statistics.median(samples)),
        "lag_seconds_max": round(max(samples) / rate, 3) if rate else None,  # records behind / arrival rate
        "drain_seconds_after_intake": round(drain, 2),
        "server": server,
    }


def _status_ids(settings: ProcessorSettings) -> list[str]:
    """Up to 20,000 ids of the bench partner's folded transactions: what the status GETs ask for."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        query = (
            f"SELECT transaction_id FROM {settings.database_schema}.transactions WHERE partner = 'bench' LIMIT 20000"
        )
        return [row[0] for row in conn.execute(query)]  # type: ignore[call-overload]


class OpenLoop:
    """GETs to one server over keep-alive connections, each sent on its schedule: their latencies, the
    answers not 200, and the CPU the measured parts of the stack spent per answer."""

    def __init__(self, connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], meter: StackMeter):
        self.connections = connections
        self.meter = meter
        self.latencies: list[float] = []
        self.errors = 0
        self.free: asyncio.Queue = asyncio.Queue()
        for pair in connections:
            self.free.put_nowait(pair)

    @classmethod
    async def connect(cls, port: int, meter: StackMeter, count: int = 16) -> "OpenLoop":
        return cls([await asyncio.open_connection("127.0.0.1", port) for _ in range(count)], meter)

    async def one(self, path: str) -> None:
        """One GET on a free connection, timed to the end of its body."""
        reader, writer = await self.free.get()
        started = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nhost: b\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        self.latencies.append(time.perf_counter() - started)
        if not head.startswith(b"HTTP/1.1 200"):
            self.errors += 1
        self.free.put_nowait((reader, writer))

    async def steady(self, paths: Callable[[], str], rate: int) -> dict:
        """`rate` requests a second for 10 s, each sent on its schedule (open loop); percentiles in ms, and
        the CPU per answer of the parts of the stack."""
        for _ in range(200):  # warm the connections and the caches
            await self.one(paths())
        self.latencies.clear()
        tasks = []
        busy = _machine_seconds()
        with _cpu(self.meter) as used:
            start = time.perf_counter()
            for n in range(rate * 10):
                await asyncio.sleep(max(start + n / rate - time.perf_counter(), 0))
                tasks.append(asyncio.create_task(self.one(paths())))
            await asyncio.gather(*tasks)
        cores_busy = (_machine_seconds() - busy) / (time.perf_counter() - start)
        others = cores_busy - sum(used.values()) / (time.perf_counter() - start)
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000, 3)

        return {"requests": len(ordered), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
                "cpu_us_per_get": per_answer_us(used, len(ordered)),
                # the machine's cores busy on average, and the part of them none of the measured took
                "cores_busy": round(cores_busy, 2), "cores_busy_others": round(others, 2)}  # fmt: skip

    def close(self) -> None:
        for _, writer in self.connections:
            writer.close()


async def status_latency(env: dict[str, str], rate: int, tmp: Path) -> dict:
    """The status GET at `rate` a second, and /health at the same rate beside it: the HTTP path alone."""
    ids_known = _status_ids(ProcessorSettings.from_env(env))
    status_env = {"GATEWAY_PARTNER": "bench", "E2E_LOG": str(tmp / "gateway-status.log"), "GATEWAY_ACCESS_LOG": "false"}
    server = Server({**env, **status_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics-status")})
    meter = _stack(Settings.from_env(env), ("postgres", "redis"), gateway=server.process.pid)
    client = await OpenLoop.connect(server.port, meter)
    try:
        # the ceiling: the same client and server answering /health (no database) at the same rate
        ceiling = await client.steady(lambda: "/health", rate)
        status = await client.steady(lambda: f"/api/v1/transactions/{random.choice(ids_known)}", rate)
    finally:
        client.close()
        server.stop()
    return {"rate": rate, "errors": client.errors, **status, "ceiling_health": ceiling}


def gates(result: dict, targets: dict) -> list[dict]:
    """Every target of targets.toml's [processor] against what was measured (None when its phase did not
    run: a miss). Catch-up passes on its rate or on its CPU per event: those two are `either` gates, and
    the verdict is the one that says whether either passed."""
    t = targets["processor"]
    verdicts: list[dict] = []

    def gate(name: str, measured: float | None, limit: float, higher_is_better: bool, unit: str, **more: str) -> bool:
        verdicts.append({**verdict(name, measured, limit, higher_is_better, unit), **more})
        return verdicts[-1]["passed"]

    caught_up = result.get("catch_up", {})
    rate, limit_rate = caught_up.get("events_per_second"), t["min_catch_up_events_per_second"]
    cpu, limit_cpu = caught_up.get("cpu_us_per_event", {}).get("stack"), t["max_catch_up_stack_cpu_us"]
    fast = gate("catch-up rate", rate, limit_rate, True, "events/s", either="catch-up")
    cheap = gate("catch-up whole-stack CPU per event", cpu, limit_cpu, False, "µs", either="catch-up")
    verdicts.append({
        "target": "catch-up, the rate or the CPU per event", "measured": f"{rate} events/s, {cpu} µs",
        "limit": f"{limit_rate} events/s or {limit_cpu}", "unit": "µs", "passed": fast or cheap,
    })  # fmt: skip
    gate("lag under intake", result.get("lag", {}).get("lag_seconds_max"), t["max_lag_seconds"], False, "s")
    status = result.get("status", {})
    measured_rate = status.get("rate")
    gate(f"status GET p99 at {measured_rate}/s", status.get("p99_ms"), t["max_status_p99_ms"], False, "ms")
    gate("status GET rate", measured_rate, t["status_rate"], True, "requests/s")
    gate("status GET errors", status.get("errors"), 0, False, "answers not 200")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--intake-seconds", type=float, default=20)
    parser.add_argument("--targets", type=Path, default=ROOT / "benchmarks" / "targets.toml")
    parser.add_argument("--status-rate", type=int, default=None, help="targets.toml's status_rate by default")
    parser.add_argument("--phases", default=",".join(PHASES), help="a comma-separated subset (status needs catch_up)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    targets = tomllib.loads(args.targets.read_text())
    phases = set(args.phases.split(","))
    tag = uuid.uuid4().hex[:8]
    tmp = Path(f"/tmp/bench-processor-{tag}")
    tmp.mkdir(parents=True)
    env = {
        **os.environ,
        "GATEWAY_TOPIC_PREFIX": f"bench-{tag}.",
        "GATEWAY_DATABASE_SCHEMA": f"bench_{tag}",
        "PROCESSOR_GROUP": f"bench-{tag}",
        "PROCESSOR_METRICS_PORT": "0",
        "GATEWAY_IDEMPOTENCY_TTL_SECONDS": "300",
    }
    result: dict = {}
    if "catch_up" in phases:
        result["catch_up"] = catch_up(env, args.events)
        print("catch-up:", result["catch_up"], flush=True)
    if "lag" in phases:
        lag = asyncio.run(lag_under_intake(env, args.intake_seconds, tmp))
        lag.pop("server")
        result["lag"] = lag
        print("lag under intake:", lag, flush=True)
    if "status" in phases:
        rate = args.status_rate or targets["processor"]["status_rate"]
        result["status"] = asyncio.run(status_latency(env, rate, tmp))
        print("status GET:", result["status"], flush=True)
    result["gates"] = gates(result, targets)
    save_phase(result, args.out, "processor")
    met = all(g["passed"] for g in result["gates"] if "either" not in g)
    print("targets:", "met" if met else "missed (see the report)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
