"""The webhook phase of `make bench` (issue 27): how fast the deliverer sends, and how long a partner
waits from a state change to its webhook, with the CPU each delivery costs.

    python -m benchmarks.webhooks [--rate 1000] [--seconds 20] [--backlog 20000] [--partners 4]
                                  [--targets FILE] [--out DIR]

The processor (`python -m processor run`) and the deliverer (`python -m processor deliver`) run as
they do in production, on topics and a schema of their own; `--partners` partners each subscribe to
transaction.batched with a receiver on loopback (benchmarks/webhook_receiver.py, a process of its own
that answers 204 and writes down when each webhook-id arrived). Records are written straight to the
window topics (the gateway's cost is the other phases'), so the phase measures the fold's outbox, the
claims and the sending.

1. steady: `--rate` transactions a second for `--seconds`, spread over the partners; the delay of each
   delivery is its arrival at the receiver minus the outbox row's `recorded_at` (the state change's
   commit, the same machine's clock): p50, p99, max; deliveries/s while it ran.
2. drain: the deliverer stopped, `--backlog` transactions folded, the deliverer started: deliveries/s
   until every one has arrived, and the CPU per delivery of the deliverer and PostgreSQL (from /proc).

Targets: targets.toml's [webhooks]; the exit status is 1 when one is missed.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Producer

from benchmarks.cpu import StackMeter, per_answer_us
from benchmarks.report import save_phase
from benchmarks.run import verdict
from gateway.kafka.producer import ensure_topics
from gateway.settings import Settings
from processor.settings import ProcessorSettings
from settlement.events import EVENT_ENCODER, Routing, Transaction, cloudevents_headers, transaction_accepted
from settlement.webhooks import new_secret
from tests.servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


class Receivers:
    """One receiver process per partner; `arrivals()` reads what each wrote down (webhook-id -> time)."""

    def __init__(self, partners: list[str], tmp: Path) -> None:
        self.ports = {partner: free_port() for partner in partners}
        self.files = {partner: tmp / f"arrivals-{partner}.txt" for partner in partners}
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.webhook_receiver", str(self.ports[p]), str(self.files[p])], cwd=ROOT
            )
            for p in partners
        ]

    def arrivals(self) -> dict[str, float]:
        arrived: dict[str, float] = {}
        for path in self.files.values():
            if path.exists():
                for line in path.read_text().splitlines():
                    event_id, at = line.split()
                    arrived.setdefault(event_id, float(at))  # the first arrival: a retry is not the delay
        return arrived

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


def _registry(partners: list[str], receivers: Receivers, path: Path) -> None:
    path.write_text(
        "".join(
            f'[partners.{p}]\nwebhook = {{ url = "http://127.0.0.1:{receivers.ports[p]}/hook",'
            f' secret = "{new_secret()}", events = ["transaction.batched"] }}\n'
            for p in partners
        )
    )


def _produce(settings: ProcessorSettings, partners: list[str], count: int, rate: float | None, start: int) -> None:
    """`count` t1 transactions spread over `partners`, at `rate` a second (None: as fast as it goes)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    began = time.monotonic()
    for n in range(start, start + count):
        txn = Transaction(f"hook-{n}", "10.00", "USD", "GBP", f"acct-{n % 97}", "dest", "cp", "t1", None)
        routing = Routing("t1", "t1", "2026-12-01", "t1-20261201-GBP", "requested")
        event = transaction_accepted(partners[n % len(partners)], f"k-{n}", txn, routing, "2026-11-30T10:00:00.000Z")
        producer.produce(
            settings.topic("t1"), EVENT_ENCODER.encode(event), txn.source_account.encode(),
            headers=cloudevents_headers(event, None),
        )  # fmt: skip
        producer.poll(0)
        if rate is not None:
            ahead = (n - start + 1) / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    assert producer.flush(60) == 0


def _recorded(settings: ProcessorSettings) -> dict[str, float]:
    """webhook-id -> when its outbox row was written (Unix seconds)."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT event_id, extract(epoch FROM recorded_at) FROM {settings.database_schema}.webhook_events"
        ).fetchall()
    return {event_id: float(at) for event_id, at in rows}


def _wait_for(receivers: Receivers, count: int, seconds: float) -> float:
    """Until `count` distinct webhooks arrived (or `seconds` passed); when the last one did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        arrived = receivers.arrivals()
        if len(arrived) >= count:
            return max(arrived.values())
        time.sleep(0.25)
    raise TimeoutError(f"{len(receivers.arrivals())} of {count} webhooks arrived in {seconds} s")


def _deliverer(env: dict[str, str], tmp: Path) -> ServerProcess:
    port = free_port()
    process = ServerProcess(
        "deliverer", [sys.executable, "-m", "processor", "deliver"],
        {**env, "PROCESSOR_DELIVER_METRICS_PORT": str(port)}, tmp / "deliverer.log", cwd=ROOT, append=True,
    )  # fmt: skip
    process.wait_ready(f"http://127.0.0.1:{port}/ready")
    return process


def steady(settings: ProcessorSettings, receivers: Receivers, args: argparse.Namespace) -> dict:
    count = int(args.rate * args.seconds)
    began = time.time()
    _produce(settings, args.partner_ids, count, args.rate, 0)
    last = _wait_for(receivers, count, 120)
    arrived, recorded = receivers.arrivals(), _recorded(settings)
    delays = sorted((arrived[e] - recorded[e]) * 1000 for e in arrived if e in recorded)
    return {
        "rate": args.rate,
        "transactions": count,
        "delivered": len(arrived),
        "deliveries_per_second": round(len(arrived) / (last - began), 1),
        "delay_ms": {
            "p50": round(statistics.median(delays), 1),
            "p99": round(delays[int(len(delays) * 0.99) - 1], 1),
            "max": round(delays[-1], 1),
        },
    }


def drain(env: dict[str, str], settings: ProcessorSettings, receivers: Receivers, args: argparse.Namespace,
          deliverer: ServerProcess, tmp: Path) -> dict:  # fmt: skip
    deliverer.stop()
    before = len(receivers.arrivals())
    _produce(settings, args.partner_ids, args.backlog, None, 10_000_000)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        query = f"SELECT count(*) FROM {settings.database_schema}.webhook_events WHERE state = 'pending'"
        while conn.execute(query).fetchone()[0] < args.backlog:  # type: ignore[index]
            time.sleep(0.25)
    stack = StackMeter.of_stack("redis://127.0.0.1:1", settings.kafka_bootstrap, settings.database_url)
    started = time.time()
    deliverer = _deliverer(env, tmp)
    meter = StackMeter({"postgres": stack.parts.get("postgres", [])}).with_part("deliverer", deliverer.pid)
    with meter.measure() as used:
        last = _wait_for(receivers, before + args.backlog, 600)
    deliverer.stop()
    used.pop("load", None)  # the receivers are the partners' cost, not ours: not measured
    cost = per_answer_us(used, args.backlog)
    return {
        "backlog": args.backlog,
        "deliveries_per_second": round(args.backlog / (last - started), 1),
        "cpu_us_per_delivery": cost,
    }


def gates(result: dict, targets: dict) -> list[dict]:
    t = targets["webhooks"]
    s, d = result.get("steady", {}), result.get("drain", {})
    return [
        verdict(f"webhook delay p99 at {s.get('rate')}/s", s.get("delay_ms", {}).get("p99"), t["max_delay_p99_ms"],
                False, "ms"),
        verdict("webhook deliveries per second (backlog)", d.get("deliveries_per_second"),
                t["min_deliveries_per_second"], True, "deliveries/s"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--partners", type=int, default=4)
    parser.add_argument("--targets", type=Path, default=ROOT / "benchmarks" / "targets.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    tmp = Path(f"/tmp/bench-webhooks-{tag}")
    tmp.mkdir(parents=True)
    args.partner_ids = [f"hooks{n}-{tag}" for n in range(args.partners)]
    receivers = Receivers(args.partner_ids, tmp)
    _registry(args.partner_ids, receivers, tmp / "partners.toml")
    env = {
        **os.environ,
        "GATEWAY_TOPIC_PREFIX": f"bench-hooks-{tag}.",
        "GATEWAY_DATABASE_SCHEMA": f"bench_hooks_{tag}",
        "GATEWAY_PARTNERS_FILE": str(tmp / "partners.toml"),
        "GATEWAY_FIXED_TIME": "2026-11-30T12:00:00Z",  # the batch stays open: one event per transaction
        "PROCESSOR_GROUP": f"bench-hooks-{tag}",
        "PROCESSOR_METRICS_PORT": str(free_port()),
    }
    settings = ProcessorSettings.from_env(env)
    ensure_topics(Settings.from_env(env))
    processor = ServerProcess("processor", [sys.executable, "-m", "processor", "run"], env, tmp / "processor.log",
                              cwd=ROOT)  # fmt: skip
    result: dict = {}
    deliverer = None
    try:
        processor.wait_ready(f"http://127.0.0.1:{env['PROCESSOR_METRICS_PORT']}/ready")
        deliverer = _deliverer(env, tmp)
        result["steady"] = steady(settings, receivers, args)
        print("steady:", result["steady"], flush=True)
        result["drain"] = drain(env, settings, receivers, args, deliverer, tmp)
        print("drain:", result["drain"], flush=True)
    finally:
        if deliverer is not None:
            deliverer.stop()
        processor.stop()
        receivers.stop()
    result["gates"] = gates(result, tomllib.loads(args.targets.read_text()))
    save_phase(result, args.out, "webhooks")
    return 0 if all(g["passed"] for g in result["gates"]) else 1


if __name__ == "__main__":
    sys.exit(main())
