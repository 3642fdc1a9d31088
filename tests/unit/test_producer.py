"""The producer's own guarantees, with a fake librdkafka: the poll thread outlives failing callbacks,
every request has a deadline, and a fatal error turns readiness off until the producer is replaced."""

import asyncio
import threading
from typing import ClassVar

import pytest
from confluent_kafka import KafkaError

from gateway.errors import DeliveryInDoubt
from gateway.kafka.producer import SettlementProducer
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable


class FakeMessage:
    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_780_000_000_000)


class FakeProducer:
    """Queues records; `poll` delivers them (or, when `answer` is off, holds them like a dead broker)."""

    made: ClassVar[list["FakeProducer"]] = []

    def __init__(self, config: dict) -> None:
        self.config = config
        self.pending: list = []
        self.answer = True
        self.offset = 0
        self.poll_hook = None  # called inside poll, like a librdkafka callback
        self.purged = False
        self.lock = threading.Lock()
        FakeProducer.made.append(self)

    def produce(self, topic, value, key, headers, on_delivery) -> None:
        with self.lock:
            self.pending.append((topic, on_delivery))

    def poll(self, timeout: float) -> int:
        hook, self.poll_hook = self.poll_hook, None
        if hook is not None:
            hook(self)
        if not self.answer:
            threading.Event().wait(min(timeout, 0.01))
            return 0
        with self.lock:
            pending, self.pending = self.pending, []
        for topic, on_delivery in pending:
            self.offset += 1
            on_delivery(None, FakeMessage(topic, self.offset))
        threading.Event().wait(min(timeout, 0.005))
        return len(pending)

    def purge(self) -> None:
        self.purged = True
        with self.lock:
            pending, self.pending = self.pending, []
        for topic, on_delivery in pending:
            on_delivery(KafkaError(KafkaError._PURGE_QUEUE, "purged"), FakeMessage(topic, -1))

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.pending)


@pytest.fixture
async def producer():
    FakeProducer.made.clear()
    settings = Settings(delivery_timeout_ms=300)
    made = SettlementProducer(settings, Metrics(), factory=FakeProducer)
    made.start()
    yield made
    await asyncio.to_thread(made.close, 1.0)


async def _send(producer: SettlementProducer, n: int = 1):
    return await asyncio.gather(*(producer.produce("settlement.t1", b"k", b"v", []) for _ in range(n)))


async def test_poll_thread_survives_a_failing_statistics_callback(producer):
    # librdkafka re-raises a callback's exception from poll(); the statistics callback parses JSON
    FakeProducer.made[0].poll_hook = lambda fake: producer._statistics("{not json")
    await asyncio.sleep(0.1)
    assert producer._thread is not None and producer._thread.is_alive()
    deliveries = await asyncio.wait_for(_send(producer, 3), 2)
    assert [d.offset for d in deliveries] == [1, 2, 3]
    assert producer._thread.is_alive()


async def test_a_request_without_a_report_is_in_doubt_after_its_deadline(producer):
    FakeProducer.made[0].answer = False  # the broker went silent: no report will come
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeliveryInDoubt):
        await asyncio.wait_for(_send(producer), 5)
    waited = loop.time() - started
    assert 0.3 <= waited < 0.3 + 1.0, waited  # the delivery timeout plus the report grace, not forever


async def test_fatal_error_turns_readiness_off_then_the_producer_is_replaced(producer):
    fatal = KafkaError(KafkaError._FATAL, "idempotent producer fenced", fatal=True)
    first = FakeProducer.made[0]
    first.answer = False
    waiting = asyncio.ensure_future(_send(producer))
    await asyncio.sleep(0.05)
    # the error callback runs on the poll thread; the records the failed producer held are in doubt
    first.poll_hook = lambda fake: producer._on_error(fatal)
    with pytest.raises(DeliveryInDoubt):
        await asyncio.wait_for(waiting, 2)
    assert first.purged
    for _ in range(100):
        if len(FakeProducer.made) == 2 and producer.fatal is None:
            break
        await asyncio.sleep(0.01)
    assert len(FakeProducer.made) == 2 and producer.fatal is None
    deliveries = await asyncio.wait_for(_send(producer), 2)
    assert deliveries[0].offset == 1  # through the new producer


async def test_while_failed_nothing_is_handed_to_the_producer(producer):
    producer._running = False  # hold the poll thread, or it would replace the producer at once
    await asyncio.to_thread(producer._thread.join)
    producer.fatal = "fenced"
    assert "kafka: the producer failed: fenced" in producer.check(0.1)
    with pytest.raises(DependencyUnavailable) as refused:
        await _send(producer)
    assert not isinstance(refused.value, DeliveryInDoubt)  # certainly not sent: safe to release
