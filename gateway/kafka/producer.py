"""An asyncio face on confluent-kafka's Producer: produce, await the broker's delivery report.

librdkafka runs delivery callbacks inside `poll()`, which blocks, so a dedicated thread polls.
Callbacks only collect (future, error, message) triples; after each poll the thread hands the
whole batch to the event loop with one `call_soon_threadsafe`, so a busy producer costs the loop
one wake-up per poll rather than one per record.
"""

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from gateway.errors import DeliveryInDoubt
from gateway.settings import REPORT_GRACE_MS, Settings
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable
from settlement.topics import KEEP_FOREVER, create_topics


class Delivery(NamedTuple):
    """Where the broker stored a record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the record's timestamp in the log (set by librdkafka at produce)


def producer_config(settings: Settings) -> dict[str, object]:
    """librdkafka settings: idempotent, acks=all, bounded queue and a delivery timeout of seconds."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "settlement-gateway",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.linger_ms,
        "compression.type": settings.compression,
        "queue.buffering.max.messages": settings.queue_max_messages,
        "message.timeout.ms": settings.delivery_timeout_ms,
        "socket.connection.setup.timeout.ms": min(settings.delivery_timeout_ms, 5000),
        "socket.nagle.disable": True,  # a record is one small write: send it now, not after an ACK
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 1000,
        "topic.metadata.refresh.interval.ms": 30_000,
        # librdkafka's own log lines go through Python logging instead of raw stderr
        "logger": logging.getLogger("gateway.kafka"),
        "log.connection.close": False,
        "statistics.interval.ms": 5000,
    }


# a record to produce: topic, key, value, headers
Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]
# (future of the request, error or None, the message, seconds from produce to the report)
Report = tuple["asyncio.Future[Delivery]", KafkaError | None, object, float]

log = logging.getLogger("gateway.kafka")


class SettlementProducer:
    """One Kafka producer per worker process, started and stopped by the app's lifespan.

    Outcomes of `produce`: a Delivery; DependencyUnavailable when the record certainly never left
    this process (queue full, produce refused, the producer failed fatally); DeliveryInDoubt when it
    was handed to librdkafka and no success came back (a delivery error or timeout, or no report
    within the delivery timeout plus REPORT_GRACE_MS): it may be in the log.

    The poll thread survives any exception a callback raises, every request has a deadline of its
    own, and a fatal error of the idempotent producer (reported through `error_cb`) turns readiness
    to 503 until the thread has replaced the producer with a new one."""

    def __init__(self, settings: Settings, metrics: Metrics, factory: Callable[[dict], Any] = Producer) -> None:
        self._settings = settings
        self._metrics = metrics
        self._config = {**producer_config(settings), "stats_cb": self._statistics, "error_cb": self._on_error}
        self._factory = factory
        self._producer = factory(self._config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._reports: list[Report] = []
        self._outbox: list[tuple[str, bytes, bytes, list[tuple[str, bytes]], asyncio.Future[Delivery]]] = []
        self._send_scheduled = False
        self._deadlines: deque[tuple[float, asyncio.Future[Delivery]]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._wait = (settings.delivery_timeout_ms + REPORT_GRACE_MS) / 1000
        self.fatal: str | None = None  # the fatal error not yet recovered from
        self._delivery = metrics.tally_histogram(metrics.kafka_delivery)

    def start(self) -> None:
        """Bind to the running event loop and start the poll thread."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        queue, sampled = self._metrics.kafka_queue, 0.0
        while self._running:
            try:
                self._producer.poll(0.05)
                if self.fatal is not None:
                    self._replace()
                if (now := time.monotonic()) - sampled >= 0.1:
                    queue.set(len(self._producer))
                    sampled = now
            except Exception:
                # A callback raised (librdkafka re-raises it from poll): count it and go on polling,
                # or every request of this worker would wait for a report that no thread collects.
                self._metrics.kafka_poll_errors.inc()
                log.exception("kafka poll thread: a callback failed; polling goes on")
            self._hand_over()

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (poll thread). Fatal errors make the producer unusable."""
        if error.fatal():
            self._metrics.kafka_fatal_errors.inc()
            log.critical("kafka producer failed fatally: %s; replacing it", error.str())
            self.fatal = error.str()
        else:
            log.warning("kafka: %s", error.str())

    def _replace(self) -> None:
        """Poll thread, after a fatal error: fail what the old producer holds (each of those records
        is in doubt), then produce through a new one."""
        old, self._producer = self._producer, self._factory(self._config)
        try:
            old.purge()
            old.poll(0)  # serves the reports of the purged records
        except Exception:
            log.exception("kafka: could not purge the failed producer")
        self.fatal = None
        log.warning("kafka producer replaced after a fatal error")

    def _statistics(self, document: str) -> None:
        """librdkafka's statistics (every few seconds, in the poll thread): RTT and batch sizes."""
        stats = json.loads(document)
        for broker in stats.get("brokers", {}).values():
            if broker.get("nodeid", -1) >= 0 and broker.get("rtt", {}).get("cnt"):
                self._metrics.kafka_broker_rtt.labels(broker["nodename"]).set(broker["rtt"]["avg"] / 1e6)
        for name, topic in stats.get("topics", {}).items():
            if topic.get("batchsize", {}).get("cnt"):
                self._metrics.kafka_batch_size.labels(name).set(topic["batchsize"]["avg"])
                self._metrics.kafka_batch_count.labels(name).set(topic["batchcnt"]["avg"])

    def _hand_over(self) -> None:
        if self._reports:
            batch, self._reports = self._reports, []
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._resolve_all, batch)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                log.warning("kafka: %d delivery reports after the event loop closed", len(batch))

    def _resolve_all(self, batch: list["Report"]) -> None:
        """On the event loop: settle the futures of one batch of delivery reports."""
        for future, error, message, elapsed in batch:
            if error is None:
                self._delivery.observe(elapsed)
            else:
                self._metrics.tally(self._metrics.kafka_delivery_errors, error.name()).inc()
            if future.done():
                continue  # cancelled, or past its deadline: in doubt already; the log tells its fate
            if error is not None:
                future.set_exception(DeliveryInDoubt("kafka", error.str()))
            else:
                m: Any = message
                future.set_result(Delivery(m.topic(), m.partition(), m.offset(), m.timestamp()[1]))

    async def produce(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Delivery:
        """Send one record and return where the broker stored it (see the class for the errors).

        Records of one event-loop tick are handed to librdkafka together at the end of the tick, so
        its broker thread wakes once for all of them and sends them in one request."""
        return await self.produce_all([(topic, key, value, headers)])[0]

    def produce_all(self, records: list[Record]) -> list["asyncio.Future[Delivery]"]:
        """Hand many records (a bulk request's) to librdkafka together at the end of this tick; one
        future per record, with `produce`'s outcomes. Raises DependencyUnavailable when the producer
        has failed (then none was sent)."""
        assert self._loop is not None, "producer not started"
        if self.fatal is not None:
            raise DependencyUnavailable("kafka", f"the producer failed: {self.fatal}")
        create_future, outbox, deadlines = self._loop.create_future, self._outbox, self._deadlines
        deadline = time.monotonic() + self._wait
        futures: list[asyncio.Future[Delivery]] = []
        for topic, key, value, headers in records:
            future: asyncio.Future[Delivery] = create_future()
            outbox.append((topic, key, value, headers, future))
            deadlines.append((deadline, future))
            futures.append(future)
        if not self._send_scheduled:
            self._send_scheduled = True
            self._loop.call_soon(self._send_outbox)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._wait, self._sweep)
        return futures

    def _sweep(self) -> None:
        """Fail, as in doubt, every request whose report is later than its deadline; then sleep until
        the next deadline. One timer for all requests instead of one each."""
        self._sweeper = None
        deadlines, now = self._deadlines, time.monotonic()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(DeliveryInDoubt("kafka", f"no delivery report within {self._wait:g} s"))
        if deadlines:
            assert self._loop is not None
            self._sweeper = self._loop.call_at(self._loop.time() + max(deadlines[0][0] - now, 0.05), self._sweep)

    def _send_outbox(self) -> None:
        self._send_scheduled = False
        outbox, self._outbox = self._outbox, []
        produce = self._producer.produce
        for topic, key, value, headers, future in outbox:
            if future.done():
                continue  # its request was cancelled before anything was sent
            started = time.perf_counter()

            def on_delivery(error: KafkaError | None, message: object, future=future, started=started) -> None:
                # Runs in the poll thread (inside poll() or the final flush()), the only thread that
                # also swaps `_reports`, so no lock is needed.
                self._reports.append((future, error, message, time.perf_counter() - started))

            try:
                produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            except BufferError:
                self._metrics.tally(self._metrics.kafka_delivery_errors, "_QUEUE_FULL").inc()
                future.set_exception(DependencyUnavailable("kafka", "local producer queue is full"))
            except KafkaException as exc:
                code = exc.args[0].name() if exc.args else "unknown"
                self._metrics.tally(self._metrics.kafka_delivery_errors, code).inc()
                reason = exc.args[0].str() if exc.args else "produce failed"
                future.set_exception(DependencyUnavailable("kafka", reason))

    def check(self, timeout: float) -> list[str]:
        """Blocking: ask a broker for metadata; return what is wrong (empty when healthy)."""
        broken = []
        if self._thread is not None and not self._thread.is_alive():
            broken.append("kafka: the producer's poll thread stopped")
        if self.fatal is not None:
            broken.append(f"kafka: the producer failed: {self.fatal}")
        if broken:
            return broken
        try:
            metadata = self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            return [f"kafka: {exc.args[0].str() if exc.args else 'metadata request failed'}"]
        if not metadata.brokers:
            return ["kafka: no broker answered"]
        return [
            f"kafka: topic {self._settings.topic(window)} missing"
            for window in ("rtgs", "t0", "t1")
            if self._settings.topic(window) not in metadata.topics
        ]

    def close(self, timeout: float) -> int:
        """Blocking: stop polling, flush what is queued within `timeout` seconds; return records left."""
        self._running = False
        if self._thread is not None:
            self._thread.join()
        left = self._producer.flush(timeout)
        self._hand_over()
        return left


def ensure_topics(settings: Settings, timeout: float = 15.0) -> list[str]:
    """Blocking: create the window topics that are missing (keeping their records forever) and wait
    until every partition has a leader (a produce right after creation would fail otherwise); return
    the names created."""
    wanted = [settings.topic(window) for window in ("rtgs", "t0", "t1")]
    return create_topics(
        settings.kafka_bootstrap, wanted, settings.topic_partitions, settings.topic_replication, timeout, KEEP_FOREVER
    )
