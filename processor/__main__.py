"""settlement-processor [run | supervise | migrate | replay | digest]

run        fold the window topics into PostgreSQL, advance batches, publish batch events (default);
           metrics, /health and /ready on PROCESSOR_METRICS_PORT; waits out PostgreSQL and Kafka;
           exits 2 on a configuration error (a window topic that deletes records among them)
supervise  run `run` in a child process and start it again, with back-off, whenever it dies
migrate    apply the schema migrations and exit
replay     rebuild the whole state from offset 0 into an empty schema (<schema>_replay) up to the
           offsets the live state has reached, and print both digests; exit 1 when they differ,
           2 when the log no longer starts at offset 0
digest     print the digest of the live state and the offsets it is as of
deliver    send the webhook outbox's events to the partners the registry (GATEWAY_PARTNERS_FILE)
           subscribes, signed (Standard Webhooks), retried on PROCESSOR_WEBHOOK_RETRY_SCHEDULE; metrics,
           /health and /ready on PROCESSOR_DELIVER_METRICS_PORT; waits out PostgreSQL
"""

import argparse
import asyncio
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from processor.calendar import SettlementCalendar
from processor.metrics import ProcessorMetrics
from processor.replay import replay
from processor.service import Processor
from processor.settings import ProcessorSettings
from processor.store import SettlementStore
from processor.supervisor import supervise
from processor.webhooks.deliverer import Deliverer
from processor.webhooks.metrics import DeliveryMetrics
from settlement.errors import ConfigurationError
from settlement.logs import configure_logging


class Operated(Protocol):
    """What the operations port reports on: ready or not, and the configuration fault found, if any."""

    @property
    def ready(self) -> bool: ...

    problem: str | None
    waits_for: str  # what it waits for while not ready ("PostgreSQL or Kafka")


def serve_operations(
    host: str, port: int, registry: CollectorRegistry, service: Operated, name: str = "settlement-processor"
) -> ThreadingHTTPServer:
    """/metrics, /health and /ready of `service` on host:port, in a thread of their own."""
    healthy = json.dumps({"status": "healthy", "service": name}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                status, kind, body = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
            elif self.path == "/health":
                status, kind, body = 200, "application/json", healthy
            elif self.path == "/ready":
                ready = service.ready
                status, kind = (200 if ready else 503), "application/json"
                reason = service.problem or f"starting, stopping, or waiting for {service.waits_for}"
                body = json.dumps({"status": "ready"} if ready else {"status": "not ready", "reason": reason}).encode()
            else:
                status, kind, body = 404, "application/json", b'{"status":"not found"}'
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="operations", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="settlement-processor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "command", nargs="?", default="run", choices=("run", "supervise", "migrate", "replay", "digest", "deliver")
    )
    args = parser.parse_args(argv)
    try:
        settings = ProcessorSettings.from_env()
        calendar = SettlementCalendar.from_settings(settings)
    except ConfigurationError as exc:
        print(f"settlement-processor: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "supervise":
        return supervise([sys.executable, "-m", "processor", "run"])
    if args.command == "replay":
        return replay(settings, calendar)
    if args.command == "deliver":  # no migration: it waits for the processor's schema like for PostgreSQL
        return deliver(settings)
    store = SettlementStore(settings.database_url, settings.database_schema, calendar)
    store.migrate()
    if args.command == "migrate":
        return 0
    if args.command == "digest":
        snapshot = store.snapshot()
        print(snapshot.digest, sum(snapshot.offsets.values()), "records", len(snapshot.steps), "steps")
        return 0
    metrics = ProcessorMetrics()
    processor = Processor(settings, store, metrics, settings.clock())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: processor.stopping.set())
    operations = (
        serve_operations(settings.metrics_host, settings.metrics_port, metrics.registry, processor)
        if settings.metrics_port
        else None
    )
    try:
        processor.run()
    except ConfigurationError as exc:
        print(f"settlement-processor: {exc}", file=sys.stderr)
        return 2
    finally:
        if operations is not None:
            operations.shutdown()
        store.close()
    return 0


def deliver(settings: ProcessorSettings) -> int:
    """Run the webhook deliverer until SIGTERM or SIGINT (the attempts under way end and are recorded)."""
    metrics = DeliveryMetrics()

    async def delivering() -> None:
        deliverer = Deliverer(settings, metrics)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, deliverer.stop)
        operations = (
            serve_operations(
                settings.metrics_host, settings.deliver_metrics_port, metrics.registry, deliverer, "webhook-deliverer"
            )
            if settings.deliver_metrics_port
            else None
        )
        try:
            await deliverer.run()
        finally:
            if operations is not None:
                operations.shutdown()

    asyncio.run(delivering())
    return 0


if __name__ == "__main__":
    sys.exit(main())
