"""The processor phase of `make bench`: catch-up rate, consumer lag under the gateway's intake, and the
latency of the status API at a steady rate. Each run uses topics and a schema of its own.

    python -m benchmarks.processor [--events 200000] [--intake-seconds 20] [--status-rate 1000] [--out DIR]

1. catch-up: `--events` TransactionAccepted records are written to the window topics first; then one
   processor folds them; events/s from its first record to its last.
2. lag: a two-worker gateway takes new transactions from wrk's 64 connections as fast as it answers
   for `--intake-seconds` while the processor runs; every 0.25 s the lag (records in the topics not
   yet folded, from the database's offsets) is sampled; in seconds, lag / intake rate.
3. status: GET /api/v1/transactions/{id} of folded transactions at `--status-rate` per second
   (open loop, each request sent on its schedule) for 10 s; p50/p99/p99.9.
Targets (issue 10): catch-up >= 50,000 events/s, lag under 2 s, status p99 <= 5 ms at 1,000/s.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from gateway import ids
from gateway.kafka.events import (
    EVENT_ENCODER,
    Routing,
    Transaction,
    TransactionAccepted,
    cloudevents_headers,
    event_time_ms,
    fingerprint,
)
from gateway.kafka.producer import ensure_topics
from gateway.settings import Settings
from processor.calendar import SettlementCalendar
from processor.service import Processor, ProcessorMetrics
from processor.settings import ProcessorSettings
from processor.store import SettlementStore
from tests.e2e.conftest import Server

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ("t0", "t1", "rtgs")


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
        event = TransactionAccepted(
            ids.uuid7(), "2026-11-30T10:00:00.000Z", "bench", f"k-{n}", fingerprint(txn), txn, routing
        )
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
        return int(conn.execute(f"SELECT coalesce(sum(next_offset), 0) FROM {schema}.consumed").fetchone()[0])  # type: ignore[index]


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


def catch_up(env: dict[str, str], events: int) -> dict:
    gateway = Settings.from_env(env)
    ensure_topics(gateway)
    started = time.monotonic()
    _produce_backlog(gateway, events)
    produced = time.monotonic() - started
    settings = ProcessorSettings.from_env(env)
    store = SettlementStore(settings.database_url, settings.schema, SettlementCalendar.from_settings(settings))
    store.migrate()
    processor = Processor(settings, store, ProcessorMetrics(), time.time)
    processor.subscribe()
    first = None
    try:
        while True:
            got = processor.step(1.0)
            if got and first is None:
                first = time.monotonic()
            if first is not None and _folded(settings.database_url, settings.schema) >= events:
                break
    finally:
        processor.close()
        store.close()
    seconds = time.monotonic() - (first or time.monotonic())
    return {"events": events, "produce_seconds": round(produced, 2), "fold_seconds": round(seconds, 2),
            "events_per_second": round(events / seconds)}  # fmt: skip


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
            samples.append(ends - await asyncio.to_thread(_folded, settings.database_url, settings.schema))
        report = (await load.communicate())[0].decode()
    finally:
        server.stop()
    accepted = float(report.split("Requests/sec:")[1].split()[0]) * seconds if "Requests/sec:" in report else 0
    # after intake stops, how long until the processor has folded everything
    drained_at = time.monotonic()
    final = await asyncio.to_thread(_ends, settings.kafka_bootstrap, settings.topics)
    while await asyncio.to_thread(_folded, settings.database_url, settings.schema) < final:
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


async def status_latency(env: dict[str, str], rate: int, tmp: Path) -> dict:
    settings = ProcessorSettings.from_env(env)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        query = f"SELECT transaction_id FROM {settings.schema}.transactions WHERE partner = 'bench' LIMIT 20000"
        ids_known = [row[0] for row in conn.execute(query)]  # type: ignore[call-overload]
    status_env = {"GATEWAY_PARTNER": "bench", "E2E_LOG": str(tmp / "gateway-status.log"), "GATEWAY_ACCESS_LOG": "false"}
    server = Server({**env, **status_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics-status")})
    latencies: list[float] = []
    errors = 0
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(16)]
    free: asyncio.Queue = asyncio.Queue()
    for pair in connections:
        free.put_nowait(pair)

    async def one(path: str) -> None:
        nonlocal errors
        reader, writer = await free.get()
        started = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nhost: b\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if not head.startswith(b"HTTP/1.1 200"):
            errors += 1
        free.put_nowait((reader, writer))

    async def steady(paths: Callable[[], str]) -> dict:
        """`rate` requests a second for 10 s, each sent on its schedule (open loop); percentiles in ms."""
        for _ in range(200):  # warm the connections and the caches
            await one(paths())
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        for n in range(rate * 10):
            await asyncio.sleep(max(start + n / rate - time.perf_counter(), 0))
            tasks.append(asyncio.create_task(one(paths())))
        await asyncio.gather(*tasks)
        ordered = sorted(latencies)

        def pct(q: float) -> float:
            return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000, 3)

        return {"requests": len(ordered), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999)}

    try:
        # the ceiling: the same client and server answering /health (no database) at the same rate
        ceiling = await steady(lambda: "/health")
        status = await steady(lambda: f"/api/v1/transactions/{random.choice(ids_known)}")
    finally:
        for _, writer in connections:
            writer.close()
        server.stop()
    return {"rate": rate, "errors": errors, **status, "ceiling_health": ceiling}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--intake-seconds", type=float, default=20)
    parser.add_argument("--status-rate", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
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
    result: dict = {"catch_up": catch_up(env, args.events)}
    print("catch-up:", result["catch_up"], flush=True)
    lag = asyncio.run(lag_under_intake(env, args.intake_seconds, tmp))
    lag.pop("server")
    result["lag"] = lag
    print("lag under intake:", lag, flush=True)
    result["status"] = asyncio.run(status_latency(env, args.status_rate, tmp))
    print("status GET:", result["status"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"processor-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"report: {path}")
    met = (
        result["catch_up"]["events_per_second"] >= 50_000
        and (lag["lag_seconds_max"] or 0) < 2.0
        and result["status"]["p99_ms"] <= 5.0
        and result["status"]["errors"] == 0
    )
    print("targets:", "met" if met else "missed (see the report)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
