"""Settling reservations whose record may or may not be in Kafka, by reading the log.

A reservation stays pending when its delivery is in doubt: a delivery error or timeout (the broker
may have written the record and lost the answer), a worker that died between produce and complete,
a completion Redis never took. Releasing it on a guess could write a payment twice; keeping it
forever would block the partner. So the log decides, once the record can no longer be on its way:

- A pending reservation names its record (event id, topic, reservation time by Redis's clock, so every
  gateway judges its age alike, whatever its own clock says). Once it is older than the horizon (the
  delivery timeout, the report grace and GATEWAY_IN_DOUBT_MARGIN_MS), the record has either been
  written or will never be: librdkafka gives up on it at the delivery timeout, and
  an idempotent producer that timed out in-flight records bumps its epoch, so the broker refuses a
  late copy of the old request.
- The resolver reads the topic's partitions from before the reservation time to their current end,
  looking for the event id in the CloudEvents `ce_id` header. The record carries the producing
  gateway's time, which may differ from Redis's: the scan starts GATEWAY_MAX_CLOCK_SKEW_MS earlier.
- Found: the key is completed with the answer the 202 would have given (its coordinates and
  `accepted_at`, the record's timestamp), so the partner's retry gets 200 with the real offset.
- Not found, twice, `CONFIRM_SECONDS` apart: the key is released, so the retry is new again.

Who asks: the worker whose delivery was in doubt, at once; and any worker whose `reserve` finds a
key pending beyond the horizon (its owner may be dead). Meanwhile a retry gets 409 with Retry-After.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition

from gateway.idempotency.reservation import PendingRecord, Reservation
from gateway.idempotency.store import IdempotencyStore
from gateway.intake.schemas import compact_answer
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable
from settlement.events import TransactionAccepted

log = logging.getLogger("gateway.intake.in_doubt")

# the scan starts this long before the reservation, besides the clock skew allowed: the record's
# timestamp (librdkafka stamps it at produce) and Redis's time may differ by a little more
SCAN_SLACK_MS = 5_000
# "not in the log" is believed only when a second scan this much later agrees
CONFIRM_SECONDS = 2.0
RETRY_SECONDS = 1.0
_EVENT = msgspec.json.Decoder(TransactionAccepted)


@dataclass
class _Doubt:
    reservation: Reservation
    record: PendingRecord
    due: float  # monotonic time of the next look
    absent_since: float | None = None


@dataclass
class Found:
    """Where the log holds an in-doubt record, and the answer its 202 carried."""

    topic: str
    partition: int
    offset: int
    body: bytes = field(repr=False)


class LogReader:
    """Blocking: find records by event id in a topic, from a point in time to the current end."""

    def __init__(self, settings: Settings) -> None:
        self._bootstrap = settings.kafka_bootstrap
        self._timeout = max(settings.ready_timeout_ms / 1000, 2.0)
        self._consumer: Consumer | None = None

    def find(self, topic: str, since_ms: int, event_ids: set[str]) -> dict[str, Found]:
        """The records of `event_ids` written to `topic` at or after `since_ms`. KafkaException or
        TimeoutError when the broker cannot answer (nothing is concluded then)."""
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self._bootstrap,
                    "group.id": "settlement-gateway-in-doubt",  # never joined: partitions are assigned
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "logger": logging.getLogger("gateway.kafka"),
                }
            )
        consumer, timeout = self._consumer, self._timeout
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=timeout)
        ends: dict[int, int] = {}
        assignment = []
        for start in starts:
            if start.error is not None:
                raise KafkaException(start.error)
            _, end = consumer.get_watermark_offsets(TopicPartition(topic, start.partition), timeout=timeout)
            if 0 <= start.offset < end:  # -1: no record at or after `since_ms` in this partition
                ends[start.partition] = end
                assignment.append(TopicPartition(topic, start.partition, start.offset))
        found: dict[str, Found] = {}
        wanted = {event_id.encode(): event_id for event_id in event_ids}
        consumer.assign(assignment)
        try:
            while ends and len(found) < len(wanted):
                messages = consumer.consume(1000, timeout=timeout)
                if not messages:
                    raise TimeoutError(f"{topic}: no record within {timeout:g} s while scanning")
                message: Any
                for message in messages:
                    if message.error() is not None:
                        raise KafkaException(message.error())
                    partition, offset = message.partition(), message.offset()
                    if partition not in ends:
                        continue
                    event_id = next((v for k, v in message.headers() or () if k == "ce_id"), None)
                    if event_id in wanted and wanted[event_id] not in found:  # the first copy is the answer
                        found[wanted[event_id]] = self._answer(message)
                    if offset + 1 >= ends[partition]:
                        del ends[partition]
        finally:
            consumer.unassign()
        return found

    @staticmethod
    def _answer(message: Any) -> Found:
        event = _EVENT.decode(message.value())
        _, timestamp_ms = message.timestamp()
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        return Found(
            topic, partition, offset, compact_answer(event.routing.batch, topic, partition, offset, timestamp_ms)
        )

    def close(self) -> None:
        """Close the consumer (the next `find` makes a new one)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()


class DoubtResolver:
    """One per worker: watches in-doubt reservations and settles each from the log (see the module)."""

    def __init__(self, settings: Settings, store: IdempotencyStore, metrics: Metrics, reader: LogReader) -> None:
        self.horizon_ms = settings.in_doubt_after_ms
        self._scan_before_ms = settings.max_clock_skew_ms + SCAN_SLACK_MS
        self._store = store
        self._metrics = metrics
        self._reader = reader
        self._doubts: dict[str, _Doubt] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def watch(self, reservation: Reservation, record: PendingRecord) -> None:
        """Settle `reservation` once its record can no longer be on its way (idempotent per key)."""
        if reservation.idem_key in self._doubts or not record.event_id:
            return
        # its age by Redis's clock when Redis answered, and since then by this process's monotonic clock
        due = (record.seen_at or time.monotonic()) + max(self.horizon_ms - record.age_ms, 0) / 1000
        self._doubts[reservation.idem_key] = _Doubt(reservation, record, due)
        log.warning(
            "in doubt: %s (event %s on %s); settling it from the log",
            reservation.idem_key,
            record.event_id,
            record.topic,
        )
        self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = [d for d in self._doubts.values() if d.due <= now]
            if due:
                try:
                    await self._settle(due)
                except Exception:
                    # whatever went wrong, the next round tries again: a resolver that stopped would
                    # leave these partners with 409s until their keys expire
                    log.exception("in doubt: settling failed; trying again")
                    for doubt in due:
                        doubt.due = max(doubt.due, time.monotonic() + RETRY_SECONDS)
            self._wake.clear()
            if self._doubts:
                sleep = max(min(d.due for d in self._doubts.values()) - time.monotonic(), 0.05)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep)
            else:
                await self._wake.wait()

    async def _settle(self, due: list[_Doubt]) -> None:
        by_topic: dict[str, list[_Doubt]] = {}
        for doubt in due:
            by_topic.setdefault(doubt.record.topic, []).append(doubt)
        for topic, doubts in by_topic.items():
            since = min(d.record.reserved_at_ms for d in doubts) - self._scan_before_ms
            try:
                found = await asyncio.to_thread(self._reader.find, topic, since, {d.record.event_id for d in doubts})
            except (KafkaException, TimeoutError) as exc:
                log.warning("in doubt: cannot read %s yet (%s); trying again", topic, exc)
                # with a new consumer: one whose broker was frozen was seen to fail every later read
                # (metadata: broker transport failure) while other clients had long recovered
                await asyncio.to_thread(self._reader.close)
                for doubt in doubts:
                    doubt.due, doubt.absent_since = time.monotonic() + RETRY_SECONDS, None
                continue
            for doubt in doubts:
                try:
                    await self._conclude(doubt, found.get(doubt.record.event_id))
                except DependencyUnavailable as exc:
                    log.warning("in doubt: %s not settled yet: %s", doubt.reservation.idem_key, exc)
                    doubt.due = time.monotonic() + RETRY_SECONDS

    async def _conclude(self, doubt: _Doubt, found: Found | None) -> None:
        key = doubt.reservation.idem_key
        if found is not None:
            # sent again by the store until Redis takes it; a key settled meanwhile is left as it is
            self._store.complete(doubt.reservation, found.body)
            del self._doubts[key]
            self._metrics.tally(self._metrics.in_doubt, "written").inc()
            log.warning(
                "in doubt settled: %s is in the log at %s[%d]@%d", key, found.topic, found.partition, found.offset
            )
            return
        now = time.monotonic()
        if doubt.absent_since is None:
            doubt.absent_since, doubt.due = now, now + CONFIRM_SECONDS
            return
        released = await self._store.release(doubt.reservation)
        del self._doubts[key]
        self._metrics.tally(self._metrics.in_doubt, "not_written").inc()
        log.warning("in doubt settled: %s is not in the log; %s", key, "released" if released else "already settled")

    async def close(self) -> None:
        """Stop watching (what is left stays pending in Redis, and is settled when retried)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._reader.close)
