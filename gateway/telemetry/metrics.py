"""Prometheus metrics, correct across Granian's worker processes.

With PROMETHEUS_MULTIPROC_DIR set (the run script, the Dockerfile and the e2e tests set it), every
worker writes its samples to memory-mapped files there and a scrape of any worker sums them all.
Files of processes that no longer exist (an earlier run, a worker that was replaced) are removed
when a worker starts. Without it (tests in one process) each app has a registry of its own.

The request path does not touch those files: an update there takes a lock, a system call and a
write to shared memory. It counts into plain numbers of its own (`Tally`, `TallyHistogram`), which
are added to the shared files every PUBLISH_INTERVAL seconds, before every scrape this worker
answers, and at shutdown.
"""

import asyncio
import os
import re
from bisect import bisect_left
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# from 0.1 ms, dense below a millisecond where this gateway lives, up to 10 s
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_PID_FILE = re.compile(r"_(\d+)\.db$")
PUBLISH_INTERVAL = 0.5  # seconds: how stale another worker's samples may be in a scrape


class Tally:
    """A counter's increments kept in this process until the next publish."""

    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def publish(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self._child.inc(amount)


class TallyHistogram:
    """A histogram's observations kept in this process, as bucket counts, until the next publish."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # the first bucket whose bound >= value
        self._sum += value

    def publish(self) -> None:
        if not any(self._counts):
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        # Histogram.observe() adds one to the single bucket the value falls in and its value to the
        # sum; this does the same for many observations at once.
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        self._child._sum.inc(total)


def multiprocess_dir() -> Path | None:
    """The shared metrics folder, when multi-process mode is on."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def remove_stale_files(directory: Path) -> int:
    """Delete the sample files of processes that are gone; return how many."""
    removed = 0
    for path in directory.glob("*.db"):
        match = _PID_FILE.search(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed += 1
        except PermissionError:
            pass  # alive, someone else's
    return removed


class Metrics:
    """Every metric of the gateway, created once per app."""

    def __init__(self) -> None:
        self.directory = multiprocess_dir()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale_files(self.directory)
        # In multi-process mode the files are the store and a scrape reads them; registering the
        # metrics anywhere would only count them twice.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if self.directory is not None else self.registry

        self._declare_intake(reg)
        self._declare_delivery(reg)
        self._declare_librdkafka(reg)
        self._declare_redis(reg)
        self._declare_registry(reg)

        self._tallies: dict[Hashable, Tally | TallyHistogram] = {}
        self._publisher: asyncio.TimerHandle | None = None

    def _declare_intake(self, reg: CollectorRegistry | None) -> None:
        """Requests, submissions, validation and routing."""
        self.http_duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests (OpenTelemetry semantic conventions)",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.intake = Counter(
            "settlement_intake_outcomes",
            "Transaction submissions by partner (from the registry; '-' when none was identified) and outcome",
            ["partner", "outcome"],
            registry=reg,
        )
        self.validation_errors = Counter(
            "settlement_validation_errors",
            "Broken validation rules by field and error code (one submission may break several)",
            ["field", "code"],
            registry=reg,
        )
        self.routing = Counter(
            "settlement_routing_decisions",
            "Accepted transactions by settlement window and routing reason",
            ["window", "reason"],
            registry=reg,
        )

    def _declare_delivery(self, reg: CollectorRegistry | None) -> None:
        """The hand-off to Kafka: delivery reports, the producer's queue and errors, in-doubt records."""
        self.kafka_delivery = Histogram(
            "settlement_kafka_delivery_duration_seconds",
            "Time from produce to the broker's delivery report",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.kafka_delivery_errors = Counter(
            "settlement_kafka_delivery_errors",
            "Records Kafka did not take, by librdkafka error code",
            ["code"],
            registry=reg,
        )
        self.kafka_queue = Gauge(
            "settlement_kafka_queue_messages",
            "Records in the producer's local queue or in flight to the broker",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.kafka_poll_errors = Counter(
            "settlement_kafka_poll_errors",
            "Exceptions raised in the producer's poll thread (a callback failed; polling went on)",
            registry=reg,
        )
        self.kafka_fatal_errors = Counter(
            "settlement_kafka_fatal_errors",
            "Fatal errors of the idempotent producer (each replaces the worker's producer)",
            registry=reg,
        )
        self.in_doubt = Counter(
            "settlement_in_doubt_resolutions",
            "Reservations whose delivery was in doubt, resolved by reading the log",
            ["outcome"],
            registry=reg,
        )
        self.completes_retried = Counter(
            "settlement_redis_completes_retried",
            "Completions that failed once and were sent again after Redis came back",
            registry=reg,
        )

    def _declare_librdkafka(self, reg: CollectorRegistry | None) -> None:
        """librdkafka's statistics, per broker and topic."""
        self.kafka_broker_rtt = Gauge(
            "settlement_kafka_broker_rtt_seconds",
            "Average broker round-trip time over the last statistics interval (librdkafka)",
            ["broker"],
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.kafka_batch_size = Gauge(
            "settlement_kafka_batch_size_bytes",
            "Average size of the batches sent over the last statistics interval (librdkafka)",
            ["topic"],
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.kafka_batch_count = Gauge(
            "settlement_kafka_batch_records",
            "Average records per batch over the last statistics interval (librdkafka)",
            ["topic"],
            multiprocess_mode="livemax",
            registry=reg,
        )

    def _declare_redis(self, reg: CollectorRegistry | None) -> None:
        """The idempotency scripts and Redis's memory."""
        self.redis_duration = Histogram(
            "settlement_redis_script_duration_seconds",
            "Duration of idempotency Lua scripts, one round trip each",
            ["script"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.redis_memory = Gauge(
            "settlement_redis_memory_used_ratio",
            "Redis memory used over its maxmemory (the fullest master's), as /ready last read it; 0 without a limit",
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.redis_errors = Counter(
            "settlement_redis_errors",
            "Idempotency scripts that failed (Redis unreachable, timeout)",
            ["script"],
            registry=reg,
        )

    def _declare_registry(self, reg: CollectorRegistry | None) -> None:
        """The partner registry's reloads (gateway.partners.reload): rare, so updated directly, no tally."""
        self.registry_reloads = Counter(
            "settlement_partner_registry_reloads",
            "Reloads of a changed partner registry file by outcome: loaded (now served) or failed (the previous stays)",
            ["outcome"],
            registry=reg,
        )
        self.registry_reload_failed = Gauge(
            "settlement_partner_registry_reload_failed",
            "1 while the registry file on disk failed to load and the previous registry serves (any live worker)",
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.registry_loaded = Gauge(
            "settlement_partner_registry_loaded_timestamp_seconds",
            "When the served partner registry was loaded, Unix seconds (the oldest of the live workers)",
            multiprocess_mode="livemin",
            registry=reg,
        )
        self.registry_removed = Counter(
            "settlement_partner_registry_removed",
            "Partners and keys a reload removed from the served registry, by kind: partner or key",
            ["kind"],
            registry=reg,
        )

    def tally(self, metric: Counter, *labels: str) -> Tally:
        """This process's tally of one labelled counter (made once, then reused)."""
        return self._tally(Tally, metric, labels)  # type: ignore[return-value]

    def tally_histogram(self, metric: Histogram, *labels: str) -> TallyHistogram:
        """This process's tally of one labelled histogram (made once, then reused)."""
        return self._tally(TallyHistogram, metric, labels)  # type: ignore[return-value]

    def _tally(self, kind: type, metric: Counter | Histogram, labels: tuple[str, ...]) -> Tally | TallyHistogram:
        key = (id(metric), labels)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = kind(metric.labels(*labels) if labels else metric)
        return tally

    def publish(self) -> None:
        """Add every tally to the shared samples."""
        for tally in list(self._tallies.values()):
            tally.publish()

    def start_publishing(self) -> None:
        """Publish every PUBLISH_INTERVAL seconds on the running loop, until `stop_publishing`."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.publish()
            self._publisher = loop.call_later(PUBLISH_INTERVAL, tick)

        self._publisher = loop.call_later(PUBLISH_INTERVAL, tick)

    def stop_publishing(self) -> None:
        """Stop the timer and publish what is left."""
        if self._publisher is not None:
            self._publisher.cancel()
            self._publisher = None
        self.publish()

    def exposition(self) -> bytes:
        """The Prometheus text of every worker (multi-process) or of this app; this worker's tallies first."""
        self.publish()
        if self.directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))
        return generate_latest(registry)
