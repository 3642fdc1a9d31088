"""The settlement processor's test bench: topics, a schema and a consumer group of one test, records
written as the gateway writes them, processes started and stopped, and the invariants of DESIGN section 8.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psycopg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from gateway.kafka.producer import ensure_topics
from processor.calendar import SettlementCalendar
from processor.metrics import ProcessorMetrics
from processor.replay import rebuild
from processor.service import Processor
from processor.settings import ProcessorSettings
from processor.store import SettlementStore
from settlement import ids
from settlement.events import (
    EVENT_ENCODER,
    Routing,
    Transaction,
    TransactionAccepted,
    cloudevents_headers,
    event_time_ms,
    fingerprint,
    transaction_accepted,
)
from tests.conftest import ROOT


class Setup:
    """Topics, a schema and a consumer group of one test."""

    def __init__(self, stack, database: str, logs: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.logs = logs
        self.gateway = msgspec.structs.replace(
            stack,
            topic_prefix=f"ptest-{tag}.",
            partner=f"p-{tag}",
            database_url=database,
            database_schema=f"ptest_{tag}",
        )
        self.env = {
            **os.environ,
            "GATEWAY_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "GATEWAY_TOPIC_PREFIX": self.gateway.topic_prefix,
            "GATEWAY_DATABASE_URL": database,
            "GATEWAY_DATABASE_SCHEMA": f"ptest_{tag}",
            "PROCESSOR_GROUP": f"ptest-{tag}",
            "PROCESSOR_METRICS_PORT": "0",
            "PROCESSOR_TICK_SECONDS": "0.2",
            "PROCESSOR_POLL_RECORDS": "500",
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = ProcessorSettings.from_env(self.env)
        self.database = database
        ensure_topics(self.gateway)

    def store(self) -> SettlementStore:
        store = SettlementStore(
            self.database, self.settings.database_schema, SettlementCalendar.from_settings(self.settings)
        )
        store.migrate()
        return store

    @contextlib.contextmanager
    def processor(self, clock: Callable[[], float], metrics: ProcessorMetrics | None = None) -> Iterator[Processor]:
        """An in-process processor of this test's topics and schema, subscribed, on `clock`; closed after."""
        store = self.store()
        processor = Processor(self.settings, store, metrics or ProcessorMetrics(), clock)
        try:
            processor.subscribe()
            yield processor
        finally:
            processor.close()
            store.close()

    def sql(self, query: str, *args) -> list[tuple]:
        with psycopg.connect(self.database, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {self.settings.database_schema}")
            return conn.execute(query, args).fetchall()  # type: ignore[arg-type]

    def start(self, name: str = "processor", *command: str, **env: str) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the file
            return subprocess.Popen(
                [sys.executable, "-m", "processor", *command],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )

    def partitions(self) -> set[tuple[str, int]]:
        return {(topic, p) for topic in self.settings.topics for p in range(self.gateway.topic_partitions)}

    def members(self) -> list[set[tuple[str, int]]]:
        """The partitions each live member of the processors' group holds."""
        admin = AdminClient({"bootstrap.servers": self.gateway.kafka_bootstrap})
        group = admin.describe_consumer_groups([self.settings.group])[self.settings.group].result(10)
        return [{(p.topic, p.partition) for p in m.assignment.topic_partitions} for m in group.members]

    def invariants(self) -> None:
        """DESIGN 8: distinct accepted = sum of batch counts; each transaction in exactly one batch;
        totals = exact re-sum of members; a closed batch's frozen count and totals are all its members
        (late ones joined it from an earlier batch); its late count is the transactions that left it."""
        (distinct,) = self.sql("SELECT count(*) FROM transactions")[0]
        per_batch = self.sql("SELECT batch_id, count(*) FROM transactions GROUP BY 1")
        assert distinct == sum(n for _, n in per_batch)
        assert self.sql("SELECT count(*) FROM transactions t LEFT JOIN batches b USING (batch_id) WHERE b IS NULL") == [
            (0,)
        ]
        for batch_id, count, totals in self.sql(
            "SELECT batch_id, transaction_count, totals FROM batches WHERE status <> 'open'"
        ):
            members = self.sql(
                "SELECT source_currency, sum(amount)::text, count(*) FROM transactions WHERE batch_id = %s GROUP BY 1",
                batch_id,
            )
            assert count == sum(n for *_, n in members), batch_id
            assert totals == {c: s for c, s, _ in members}, batch_id
        late = self.sql(
            "SELECT b.batch_id, b.late_count, count(t.late) FILTER (WHERE t.late) FROM batches b "
            "LEFT JOIN transactions t ON t.routed_batch_id = b.batch_id GROUP BY 1, 2 ORDER BY 1"
        )
        assert [(batch_id, counted) for batch_id, counted, _ in late] == [(batch_id, n) for batch_id, _, n in late]

    def assert_replay_matches(self) -> None:
        """The state is the fold of the log: a replay from offset 0 gives the same digest."""
        store = self.store()
        try:
            live = store.snapshot()
        finally:
            store.close()
        calendar = SettlementCalendar.from_settings(self.settings)
        assert rebuild(self.settings, calendar, f"{self.settings.database_schema}_replay", live) == live.digest


def produce(setup: Setup, events: list[TransactionAccepted], twice: set[int] = frozenset()) -> None:
    producer = Producer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "enable.idempotence": True})
    for i, event in enumerate(events):
        for _ in range(2 if i in twice else 1):
            producer.produce(
                setup.gateway.topic(event.routing.window),
                EVENT_ENCODER.encode(event),
                event.transaction.source_account.encode(),
                headers=cloudevents_headers(event, None),
                timestamp=event_time_ms(event),  # as the gateway stamps it
            )
    assert producer.flush(30) == 0


def accepted(
    partner: str,
    n: int,
    window: str = "t1",
    value_date: str = "2026-12-01",
    amount: str = "10.00",
    at: str = "2026-11-30T10:00:00.000Z",
):
    txn = Transaction(f"txn-{n}", amount, "USD", "GBP", f"acct-{n % 7}", "acct-dest", f"cp-{n % 3}", window, None)
    routing = Routing(window, window, value_date, f"{window}-{value_date.replace('-', '')}-GBP", "requested")
    return transaction_accepted(partner, f"key-{n}", txn, routing, at)


def another_instruction(event: TransactionAccepted, amount: str, at: str | None = None) -> TransactionAccepted:
    """The same partner and transaction id with another amount (another fingerprint), in an event of its
    own, accepted at `at`: what a gateway that lost the idempotency record (a Redis failover), or an older
    one, could write."""
    txn = msgspec.structs.replace(event.transaction, amount=amount)
    return msgspec.structs.replace(
        event, event_id=ids.uuid7(), occurred_at=at or event.occurred_at, fingerprint=fingerprint(txn), transaction=txn
    )


def produce_to(setup: Setup, placed: list[tuple[TransactionAccepted, int]]) -> None:
    """Write each event to the given partition of its window's topic (in this order), stamped as the
    gateway stamps it: the order in which a processor reads them is then the test's to arrange."""
    producer = Producer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "enable.idempotence": True})
    for event, partition in placed:
        producer.produce(
            setup.gateway.topic(event.routing.window),
            EVENT_ENCODER.encode(event),
            event.transaction.source_account.encode(),
            partition=partition,
            headers=cloudevents_headers(event, None),
            timestamp=event_time_ms(event),
        )
    assert producer.flush(30) == 0


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds}s: {what}")


def fold_until(processor, predicate, what: str, seconds: float = 30) -> None:
    """Step an in-process Processor until `predicate()` holds (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        processor.step(timeout=0.5)
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _end_offset(consumer: Consumer, partition: TopicPartition) -> int:
    """The end offset of a partition, asked until its leader answers (one may be elected still, after
    the broker was frozen or restarted)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)[1]
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read_batch_events(setup: Setup) -> list[tuple[dict, dict]]:
    """Every event on the batches topic, with its headers."""
    consumer = Consumer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "group.id": "ptest-reader"})
    topic = setup.settings.batches_topic
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: _end_offset(consumer, TopicPartition(topic, p)) for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        events, wanted = [], sum(ends.values())
        while len(events) < wanted:
            message = consumer.poll(10)
            assert message is not None and message.error() is None
            events.append((json.loads(message.value()), dict(message.headers())))
        return events
    finally:
        consumer.close()
