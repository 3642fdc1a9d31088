"""The processor's loop: consume the window topics as one group, fold each poll batch into PostgreSQL with
its offsets, advance the batch lifecycle (closing by the event-time watermark, settling by the clock),
publish batch events from the outbox.

On every assignment it seeks to the offsets stored in the database (never Kafka's committed ones), so
what it applies is decided by the database alone; offsets are never committed to Kafka.

Over 400 lines because it is one class: the consumer, its assignment callbacks, the waiting out of
PostgreSQL and Kafka and the outbox publisher share the instance's consumer, producer and store, and
split apart they would pass all three around.
"""

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from processor.metrics import ProcessorMetrics
from processor.records import Partition, collect
from processor.settings import ProcessorSettings
from processor.store import BatchEvent, Fenced, SettlementStore
from settlement import ids
from settlement.errors import ConfigurationError
from settlement.events import batch_event_headers
from settlement.stamps import FileStamp, file_stamp
from settlement.topics import create_topics, finite_retention
from settlement.webhooks import subscribed_events

log = logging.getLogger("processor")
MISSING, NO_REGISTRY = "missing", "none"  # registry stamps: a file that cannot be read; no file configured

# PostgreSQL unreachable, restarting or the connection lost: waited out. Any other database error is
# a fault of ours, and ends the process (its supervisor starts it again).
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)
# an instance holding no partition this long is not ready; this long, and it joins the group anew
UNASSIGNED_READY = 15.0
UNASSIGNED_REJOIN = 30.0
# partitions lost while Kafka was unreachable and not back this long after it answers again: it joins anew
REJOIN_AFTER_RETURN = 2.0


def _close_quietly(consumer: Consumer) -> None:
    with contextlib.suppress(KafkaException, RuntimeError):
        consumer.close()


class Processor:
    """One processor instance: its consumer, its producer of batch events, its database connection.

    It outlives its dependencies: PostgreSQL or Kafka unreachable, it answers not ready, waits with
    back-off and resumes from the offsets stored in the database; it never exits on them."""

    def __init__(
        self, settings: ProcessorSettings, store: SettlementStore, metrics: ProcessorMetrics, clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._positions: dict[Partition, int | None] = {}  # what the database holds for each synced partition
        self._unsynced: set[Partition] = set()  # assigned and paused until their stored offsets are read
        self._partitions: list[Partition] = []  # every partition of the window topics (the watermark's)
        self._retention_checked: set[str] = set()
        self._in_flight: set[int] = set()  # batch events handed to the producer, not yet reported
        self._confirmed: list[int] = []  # delivered, not yet marked published in the database
        self._database_ok = True
        self._kafka_ok_at = -1e9  # monotonic time of the last answer from a broker
        self._kafka_back_at = -1e9  # since when the brokers answer again (after they did not)
        self._lost_in_outage = False  # the partitions were revoked while no broker answered
        self._subscribed = False
        self._registry_stamp: FileStamp | str | None = None  # the registry file read last; None: not yet
        self._unassigned_since: float | None = time.monotonic()  # holding no partition since (monotonic)
        self._consumer = self._new_consumer()
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # never given up: an event in flight is never produced a second time by this instance
                "message.timeout.ms": 0,
                "reconnect.backoff.max.ms": 2_000,
                "logger": logging.getLogger("processor.kafka"),
            }
        )
        self._admin = AdminClient(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "reconnect.backoff.max.ms": 2_000,
                "logger": logging.getLogger("processor.kafka"),  # type: ignore[dict-item]
            }
        )
        self.stopping = threading.Event()
        self.problem: str | None = None  # a configuration fault found while running (operators' /ready)
        self.waits_for = "PostgreSQL or Kafka"

    def _new_consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self._settings.kafka_bootstrap,
                "group.id": self._settings.group,
                "enable.auto.commit": False,  # the database holds the offsets
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                # an instance that dies without leaving is replaced after this long
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                "reconnect.backoff.max.ms": 2_000,  # back within seconds of a broker's return
                "logger": logging.getLogger("processor.kafka"),
            }
        )

    @property
    def ready(self) -> bool:
        """Folding: subscribed and holding partitions (or about to: a rebalance takes seconds),
        PostgreSQL answering, a broker answered within the last five seconds."""
        unassigned = self._unassigned_since is not None and time.monotonic() - self._unassigned_since > UNASSIGNED_READY
        return (
            self._subscribed
            and not unassigned
            and self._database_ok
            and time.monotonic() - self._kafka_ok_at < 5
            and self.problem is None
            and not self.stopping.is_set()
        )

    def _rejoin_if_stranded(self) -> None:
        """A consumer that lost its partitions (a session that timed out while the broker was frozen)
        and has not got them back while the brokers answer is replaced: librdkafka was seen to stay out
        of the group for good after such a timeout, folding nothing while the process looked alive."""
        now = time.monotonic()
        if self._unassigned_since is None or not self._subscribed or now - self._kafka_ok_at > 5:
            return
        back = self._lost_in_outage and now - self._kafka_back_at >= REJOIN_AFTER_RETURN
        if now - self._unassigned_since < UNASSIGNED_REJOIN and not back:
            return
        stranded = now - self._unassigned_since
        log.warning("no partition for %.0f s while Kafka answers: a new consumer joins the group", stranded)
        self._lost_in_outage = False
        # the old one leaves the group in the background: its LeaveGroup request to a coordinator that
        # forgot it was seen to wait 5 s, and the new one need not wait for it
        stranded_consumer = self._consumer
        threading.Thread(target=_close_quietly, args=(stranded_consumer,), name="stranded-close", daemon=True).start()
        self._positions.clear()
        self._unsynced.clear()
        self._consumer = self._new_consumer()
        self._subscribed = False
        self._unassigned_since = time.monotonic()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- assignment ----------------------------------------------------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            return  # a stranded consumer closing in the background
        keys = [(p.topic, p.partition) for p in partitions]
        try:
            stored = self._store.stored_offsets(keys)
        except UNREACHABLE as exc:  # read them when PostgreSQL is back; fetch nothing until then
            log.warning("assigned %d partitions while PostgreSQL is unreachable (%s)", len(keys), exc)
            self._database_ok = False
            consumer.assign(partitions)
            consumer.pause(partitions)
            self._unsynced.update(keys)
            self._unassigned_since = None
            return
        for p in partitions:
            offset = stored.get((p.topic, p.partition))
            self._positions[(p.topic, p.partition)] = offset
            p.offset = OFFSET_BEGINNING if offset is None else offset
        consumer.assign(partitions)
        self._unassigned_since = None
        self._lost_in_outage = False
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:
            consumer.unassign()
            return  # a stranded consumer closing in the background
        for p in partitions:
            self._positions.pop((p.topic, p.partition), None)
            self._unsynced.discard((p.topic, p.partition))
        consumer.unassign()
        self._metrics.lag.clear()  # no longer this instance's to report
        if not self._positions and not self._unsynced:
            self._unassigned_since = time.monotonic()
            # a session that timed out while the brokers were away: librdkafka may not rejoin by itself
            self._lost_in_outage = time.monotonic() - self._kafka_ok_at > 5
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _unsync(self, keys: list[Partition]) -> None:
        """Stop folding `keys` until their stored offsets are read again (after a fenced batch, or a
        database error that leaves unknown whether the last commit happened)."""
        if not keys:
            return
        self._consumer.pause([TopicPartition(*key) for key in keys])
        for key in keys:
            self._positions.pop(key, None)
            self._unsynced.add(key)

    def _sync(self) -> None:
        """Seek the unsynced partitions to their stored offsets and fold them again."""
        if not self._unsynced:
            return
        stored = self._store.stored_offsets(list(self._unsynced))
        for key in list(self._unsynced):
            offset = stored.get(key)
            try:
                self._consumer.seek(TopicPartition(*key, OFFSET_BEGINNING if offset is None else offset))
            except KafkaException as exc:  # not fetching yet: the next round
                log.debug("seek %s: %s", key, exc)
                continue
            self._consumer.resume([TopicPartition(*key)])
            self._positions[key] = offset
            self._unsynced.discard(key)

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Until `stopping` is set: fold what arrives, advance batches every tick, publish their events;
        wait out PostgreSQL and Kafka with back-off when they fail. What was applied is committed
        before it returns (each poll batch is one transaction). Raises ConfigurationError when a window
        topic deletes records."""
        next_tick = 0.0
        backoff = 0.25
        try:
            while not self.stopping.is_set():
                try:
                    if not self._database_ok:
                        self._store.reconnect()
                        self._database_ok = True
                        log.warning("PostgreSQL answers again; reading the stored offsets")
                        self._unsync(list(self._positions))
                    if not self._subscribed:
                        self.subscribe()
                    if self._registry_stamp is None:  # before the first fold: nothing goes unnotified
                        self.follow_registry()
                    self._sync()
                    self.step(timeout=min(self._settings.tick_seconds, 0.5))
                    if time.monotonic() >= next_tick:
                        self.tick()
                        next_tick = time.monotonic() + self._settings.tick_seconds
                    backoff = 0.25
                except UNREACHABLE as exc:
                    if self._database_ok:
                        log.error("PostgreSQL: %s; waiting for it", exc)
                    self._database_ok = False
                    backoff = self._pause(backoff)
                except KafkaException as exc:
                    log.warning("Kafka: %s; waiting for it", exc)
                    self._kafka_ok_at = -1e9
                    backoff = self._pause(backoff)
        finally:
            self._metrics.ready.set(0)
            self.close()  # leaves the group at once, so the others take over without waiting

    def _pause(self, backoff: float) -> float:
        self._metrics.ready.set(0)
        self.stopping.wait(backoff)
        return min(backoff * 2, 2.0)

    def subscribe(self) -> None:
        """Join the group on the window topics (and make sure the batches topic exists). Raises
        ConfigurationError when a window topic deletes records (the log must stay replayable)."""
        settings = self._settings
        create_topics(settings.kafka_bootstrap, [settings.batches_topic], 3, settings.topic_replication, 15.0)
        finite = finite_retention(settings.kafka_bootstrap, settings.topics)
        if finite:
            raise ConfigurationError(_retention_problem(finite))
        self._consumer.subscribe(self._settings.topics, on_assign=self._assigned, on_revoke=self._revoked)
        self._subscribed = True

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
        with contextlib.suppress(*UNREACHABLE):  # else produced again later: consumers de-duplicate by ce_id
            self._mark_published()

    def _fold(self, messages: list[Any]) -> None:
        # records of partitions revoked or unsynced since they were fetched are left alone, and so are
        # records before the stored offset (fetched before a seek)
        positions = self._positions
        batch = collect(
            messages, lambda key, offset: key in positions and (positions[key] or 0) <= offset, self._store.calendar
        )
        if not batch.ends:
            return
        started = time.perf_counter()
        try:
            applied = self._store.apply(batch, {key: positions[key] for key in batch.ends}, self.now())
        except Fenced as exc:
            self._metrics.fenced.inc()
            log.warning("not applied, another instance moved on: %s; seeking to the stored offsets", exc)
            self._unsync(list(batch.ends))
            return
        except UNREACHABLE:
            self._unsync(list(batch.ends))  # committed or not: the stored offsets will tell
            raise
        self._metrics.apply_duration.observe(time.perf_counter() - started)
        positions.update(batch.ends)
        metrics = self._metrics
        metrics.applied.inc(applied.new)
        metrics.duplicates.inc(applied.duplicates)
        metrics.conflicts.inc(len(applied.conflicts))
        metrics.late.inc(applied.late)
        metrics.unreadable.inc(applied.unreadable)
        for conflict in applied.conflicts:
            log.warning(
                "conflict: partner %s transaction %s: the record %s[%d]@%d carries fingerprint %s, the transaction"
                " folded carries %s; recorded in conflicts, not folded",
                conflict.partner,
                conflict.transaction_id,
                conflict.topic,
                conflict.partition,
                conflict.kafka_offset,
                conflict.fingerprint,
                conflict.folded_fingerprint,
            )

    def tick(self) -> None:
        """One turn of the lifecycle on the clock: observe the partitions, then advance."""
        now = self.now()  # before asking for the end offsets: a record appended later is not behind it
        self.follow_registry()
        self.observe(now)
        self.advance(now)

    def follow_registry(self) -> None:
        """Write webhook events for the partners the registry subscribes, as of the file's last change
        (read again when its time or size moved). A file that cannot be read keeps the last one."""
        path = self._settings.partners_file
        stamp = file_stamp(Path(path)) if path else NO_REGISTRY
        if stamp is None:
            if self._registry_stamp != MISSING:  # said once, not every tick
                log.error("the partner registry %s cannot be read; webhook subscriptions unchanged", path)
                self._registry_stamp = MISSING
            return
        if stamp == self._registry_stamp:
            return
        try:
            subscriptions = subscribed_events(path)
        except ConfigurationError as exc:
            self._registry_stamp = stamp  # read again once it changes, not every tick
            log.error("%s; webhook subscriptions unchanged", exc)
            return
        self._store.subscribe(subscriptions)
        self._registry_stamp = stamp
        log.info("webhook subscriptions: %s", {p: sorted(e) for p, e in subscriptions.items()} or "none")

    def observe(self, now: datetime) -> None:
        """Mark the partitions read to their end offset as of `now`. Kafka unreachable, nothing is marked
        (the watermark waits) and the processor is not ready."""
        try:
            self._partitions = self._window_partitions()
            self._mark_caught_up(now)
            self._rejoin_if_stranded()
        except (KafkaException, TimeoutError) as exc:  # TimeoutError: an admin request unanswered
            if self._kafka_ok_at > 0:
                log.warning("Kafka: %s; the watermark waits for it", exc or "no answer")
            self._kafka_ok_at = -1e9

    def advance(self, now: datetime) -> None:
        """Advance the batch lifecycle by the stored progress and `now`, publish what it produced,
        refresh the gauges; needs PostgreSQL only (batch events wait in the producer for Kafka)."""
        done = self._store.advance(now, ids.uuid7, self._partitions)
        if done["closed"] or done["settled"] or done["rtgs_settled"]:
            log.info("batches: %s", done)
        self.publish()
        for status, count in self._store.batches_by_status().items():
            self._metrics.batches.labels(status).set(count)
        self._metrics.overdue.set(self._store.overdue(now))
        watermark = self._store.watermark(self._partitions)
        if watermark is not None:
            self._metrics.watermark.set(watermark.timestamp())
        self._metrics.ready.set(1 if self.ready else 0)

    def _mark_caught_up(self, now: datetime) -> None:
        """Store `now` as the event time of every partition folded to its end offset (as the broker
        reports it now), so idle partitions never hold the watermark back; lag gauges on the way."""
        ends = self._end_offsets(list(self._positions))
        caught_up = []
        for key, high in ends.items():
            position = self._positions.get(key)
            self._metrics.lag.labels(key[0], str(key[1])).set(max(high - (position or 0), 0))
            if (position or 0) >= high:
                caught_up.append((*key, position))
        self._store.caught_up(caught_up, now)
        for topic, partition, position in caught_up:
            if position is None and (topic, partition) in self._positions:
                self._positions[(topic, partition)] = 0  # an empty partition: its row says offset 0 now

    def _window_partitions(self) -> list[Partition]:
        """Every partition of the window topics, from a broker (which also proves Kafka answers); a
        window topic seen for the first time is checked for a retention that deletes records. Asked
        through an admin client: the consumer's connection waits behind its fetch."""
        topics = self._admin.list_topics(timeout=2).topics
        found: list[Partition] = []
        for topic in self._settings.topics:
            metadata = topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue
            found += [(topic, partition) for partition in sorted(metadata.partitions)]
            if topic not in self._retention_checked:
                finite = finite_retention(self._settings.kafka_bootstrap, [topic], timeout=5)
                self._retention_checked.add(topic)
                if finite:
                    self.problem = _retention_problem(finite)
                    log.error("%s", self.problem)
        if self._kafka_ok_at < 0:  # it answers again
            self._kafka_back_at = time.monotonic()
        self._kafka_ok_at = time.monotonic()
        return found

    def _end_offsets(self, keys: list[Partition]) -> dict[Partition, int]:
        """The end offset of each partition of `keys`, asked from the brokers now (one request each)."""
        if not keys:
            return {}
        futures = self._admin.list_offsets(
            {TopicPartition(*key): OffsetSpec.latest() for key in keys}, request_timeout=2
        )
        return {(tp.topic, tp.partition): future.result(timeout=3).offset for tp, future in futures.items()}

    def publish(self) -> int:
        """Hand the batch events not yet published (and not in flight) to the idempotent producer and
        mark those the broker confirmed; never waits for the broker. Returns how many were handed over."""
        self._producer.poll(0)  # delivery reports
        self._mark_published()
        events = [e for e in self._store.unpublished() if e.sequence not in self._in_flight]

        def delivered(error: Any, message: Any, *, event: BatchEvent) -> None:
            self._in_flight.discard(event.sequence)
            if error is None:
                self._confirmed.append(event.sequence)
                self._metrics.batch_events.labels(event.event_type).inc()
            else:  # fatal only (the timeout is infinite): produced again on the next tick
                log.warning("batch event %d not written: %s", event.sequence, error.str())

        handed = 0
        for event in events:
            try:
                self._producer.produce(
                    self._settings.batches_topic,
                    json.dumps(event.payload, sort_keys=True).encode(),
                    event.batch_id.encode(),
                    headers=batch_event_headers(event.event_type, event.event_id, event.occurred_at, event.batch_id),  # type: ignore[arg-type]
                    on_delivery=partial(delivered, event=event),
                )
            except BufferError:
                break  # the local queue is full: the rest on a later tick
            self._in_flight.add(event.sequence)
            handed += 1
        self._producer.poll(0)
        return handed

    def _mark_published(self) -> None:
        if self._confirmed:
            self._store.published(self._confirmed, self.now())
            self._confirmed = []


def _retention_problem(finite: list[str]) -> str:
    return (
        "window topics that delete records: " + "; ".join(finite) + ". The log is the source of truth and the"
        " settlement state must stay rebuildable from offset 0: set retention.ms=-1 and retention.bytes=-1"
        " (kafka-configs.sh --alter --entity-type topics --entity-name <topic> --add-config"
        " retention.ms=-1,retention.bytes=-1)"
    )
