"""The processor's loop: consume the window topics as one group, fold each poll batch into PostgreSQL with
its offsets, advance the batch lifecycle on the clock, publish batch events.

On every assignment it seeks to the offsets stored in the database (never Kafka's committed ones), so
what it applies is decided by the database alone; offsets are never committed to Kafka.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import ids
from gateway.kafka.events import CE_SOURCE, binary_mode_headers, instant
from gateway.kafka.producer import create_topics
from processor.records import Partition, collect
from processor.settings import ProcessorSettings
from processor.store import Fenced, SettlementStore

log = logging.getLogger("processor")


class ProcessorMetrics:
    """What operators scrape from the processor's own port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.applied = Counter("settlement_processor_events_applied", "Transactions folded in", registry=reg)
        self.duplicates = Counter(
            "settlement_processor_duplicates", "Records of a transaction already folded (recorded)", registry=reg
        )
        self.late = Counter(
            "settlement_processor_late_events", "Transactions that arrived for a closed batch", registry=reg
        )
        self.unreadable = Counter(
            "settlement_processor_unreadable_records", "Records that are not events", registry=reg
        )
        self.fenced = Counter(
            "settlement_processor_fenced_batches", "Poll batches not applied: another instance moved on", registry=reg
        )
        self.apply_duration = Histogram(
            "settlement_processor_apply_duration_seconds",
            "One poll batch applied to PostgreSQL (one transaction)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=reg,
        )
        self.lag = Gauge(
            "settlement_processor_consumer_lag", "Records not yet folded", ["topic", "partition"], registry=reg
        )
        self.batches = Gauge("settlement_processor_batches", "Batches by status", ["status"], registry=reg)
        self.batch_events = Counter(
            "settlement_processor_batch_events", "Batch events written to Kafka", ["event_type"], registry=reg
        )


def _headers(event_type: str, event_id: str, occurred_at: datetime, batch_id: str) -> list[tuple[str, bytes]]:
    kind = "closed" if event_type == "BatchClosed" else "settled"
    ce_type = f"com.settlement.batch.{kind}.v1"
    return binary_mode_headers(event_id, ce_type, f"{CE_SOURCE}:processor", instant(occurred_at.timestamp()), batch_id)


class Processor:
    """One processor instance: its consumer, its producer of batch events, its database connection."""

    def __init__(
        self, settings: ProcessorSettings, store: SettlementStore, metrics: ProcessorMetrics, clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._positions: dict[Partition, int | None] = {}  # what the database holds for each assigned partition
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": settings.group,
                "enable.auto.commit": False,  # the database holds the offsets
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                # an instance that dies without leaving is replaced after this long
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                "logger": logging.getLogger("processor.kafka"),
            }
        )
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "logger": logging.getLogger("processor.kafka"),
            }
        )
        self.stopping = threading.Event()
        self.ready = False

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- assignment ----------------------------------------------------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._store.stored_offsets((p.topic, p.partition) for p in partitions)
        for p in partitions:
            offset = stored.get((p.topic, p.partition))
            self._positions[(p.topic, p.partition)] = offset
            p.offset = OFFSET_BEGINNING if offset is None else offset
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._positions.pop((p.topic, p.partition), None)
        consumer.unassign()
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Until `stopping` is set: fold what arrives, advance batches every tick, publish their events.
        What was applied is committed before it returns (each poll batch is one transaction)."""
        self.subscribe()
        next_tick = 0.0
        try:
            while not self.stopping.is_set():
                self.step(timeout=min(self._settings.tick_seconds, 0.5))
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + self._settings.tick_seconds
                self.ready = True
        finally:
            self.close()  # leaves the group at once, so the others take over without waiting

    def subscribe(self) -> None:
        """Join the group on the window topics (and make sure the batches topic exists)."""
        settings = self._settings
        create_topics(settings.kafka_bootstrap, [settings.batches_topic], 3, settings.topic_replication, 15.0)
        self._consumer.subscribe(self._settings.topics, on_assign=self._assigned, on_revoke=self._revoked)

    def step(self, timeout: float) -> int:
        """Consume one poll batch (waiting up to `timeout` seconds) and fold it; return the records read."""
        messages = self._consumer.consume(self._settings.poll_records, timeout=timeout)
        if messages:
            self._fold(messages)
        return len(messages)

    def close(self) -> None:
        """Leave the group and flush the batch events (run() does it when it ends)."""
        self._consumer.close()
        self._producer.flush(5)

    def _fold(self, messages: list[Any]) -> None:
        # records of partitions revoked since they were fetched are left to their new owner
        records, unreadable, ends = collect(messages, lambda key, offset: key in self._positions)
        if not ends:
            return
        positions = {key: (self._positions[key], following) for key, following in ends.items()}
        started = time.perf_counter()
        try:
            applied = self._store.apply(records, unreadable, positions, self.now())
        except Fenced as exc:
            self._metrics.fenced.inc()
            log.warning("not applied, another instance moved on: %s; seeking to the stored offsets", exc)
            self._reseek(list(ends))
            return
        self._metrics.apply_duration.observe(time.perf_counter() - started)
        for key, following in ends.items():
            self._positions[key] = following
        metrics = self._metrics
        metrics.applied.inc(applied.new)
        metrics.duplicates.inc(applied.duplicates)
        metrics.late.inc(applied.late)
        metrics.unreadable.inc(applied.unreadable)

    def _reseek(self, keys: list[Partition]) -> None:
        stored = self._store.stored_offsets(keys)
        for key in keys:
            offset = stored.get(key)
            self._positions[key] = offset
            self._consumer.seek(TopicPartition(key[0], key[1], OFFSET_BEGINNING if offset is None else offset))

    def tick(self) -> None:
        """Advance the batch lifecycle to now, publish what it produced, refresh the gauges."""
        done = self._store.advance(self.now(), ids.uuid7)
        if done["closed"] or done["settled"] or done["rtgs_settled"]:
            log.info("batches: %s", done)
        self.publish()
        for status, count in self._store.batches_by_status().items():
            self._metrics.batches.labels(status).set(count)
        for (topic, partition), position in list(self._positions.items()):
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception:
                continue
            if high is not None and high >= 0:
                self._metrics.lag.labels(topic, str(partition)).set(max(high - (position or 0), 0))

    def publish(self) -> int:
        """Write the queued batch events to the batches topic; mark those the broker confirmed."""
        events = self._store.unpublished()
        if not events:
            return 0
        confirmed: list[int] = []

        def delivered(error: Any, message: Any, *, sequence: int) -> None:
            if error is None:
                confirmed.append(sequence)
            else:
                log.warning("batch event %d not written: %s", sequence, error.str())

        for event in events:
            self._producer.produce(
                self._settings.batches_topic,
                json.dumps(event.payload, sort_keys=True).encode(),
                event.batch_id.encode(),
                headers=_headers(event.event_type, event.event_id, event.occurred_at, event.batch_id),  # type: ignore[arg-type]
                on_delivery=partial(delivered, sequence=event.sequence),
            )
        self._producer.flush(10)
        if confirmed:
            self._store.published(confirmed, self.now())
            for event in events:
                if event.sequence in confirmed:
                    self._metrics.batch_events.labels(event.event_type).inc()
        return len(confirmed)
