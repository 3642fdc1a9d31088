"""settlement-processor [run | migrate | replay | digest]

run      fold the window topics into PostgreSQL, advance batches, publish batch events (default);
         metrics, /health and /ready on PROCESSOR_METRICS_PORT
migrate  apply the schema migrations and exit
replay   rebuild the whole state from offset 0 into an empty schema (<schema>_replay) up to the
         offsets the live state has reached, and print both digests; exit 1 when they differ
digest   print the digest of the live state and the offsets it is as of
"""

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import ConfigurationError
from gateway.telemetry.logs import configure_logging
from processor.calendar import SettlementCalendar
from processor.replay import replay
from processor.service import Processor, ProcessorMetrics
from processor.settings import ProcessorSettings
from processor.store import SettlementStore


def serve_operations(host: str, port: int, metrics: ProcessorMetrics, processor: Processor) -> ThreadingHTTPServer:
    """/metrics, /health and /ready on host:port, in a thread of their own."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                status, kind, body = 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
            elif self.path == "/health":
                status, kind, body = 200, "application/json", b'{"status":"healthy","service":"settlement-processor"}'
            elif self.path == "/ready":
                ready = processor.ready and not processor.stopping.is_set()
                status, kind = (200 if ready else 503), "application/json"
                body = b'{"status":"ready"}' if ready else b'{"status":"starting or stopping"}'
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
    parser.add_argument("command", nargs="?", default="run", choices=("run", "migrate", "replay", "digest"))
    args = parser.parse_args(argv)
    try:
        settings = ProcessorSettings.from_env()
        calendar = SettlementCalendar.from_settings(settings)
    except ConfigurationError as exc:
        print(f"settlement-processor: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "replay":
        return replay(settings, calendar)
    store = SettlementStore(settings.database_url, settings.schema, calendar)
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
        serve_operations(settings.metrics_host, settings.metrics_port, metrics, processor)
        if settings.metrics_port
        else None
    )
    try:
        processor.run()
    finally:
        if operations is not None:
            operations.shutdown()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
