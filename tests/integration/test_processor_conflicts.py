"""Duplicates and conflicts against the real Kafka and PostgreSQL.

A record of a transaction already folded (same partner and transaction id) is a duplicate when it carries
the same instruction (fingerprint), a conflict when it carries another one. A duplicate that is better
placed in the log takes the place of the folded copy while its batch is open; a conflict never does,
never reaches a total, and is recorded in `conflicts`, counted and logged. Which of two instructions is
the transaction depends on the read order (the first poll batch that held it; within it, its best copy),
so the replay reads the poll batches that found conflicts the same way and arrives at the same digest.
"""

import logging
from datetime import UTC, datetime

import msgspec
import psycopg
from confluent_kafka import Consumer, TopicPartition

from processor.calendar import SettlementCalendar
from processor.metrics import ProcessorMetrics
from processor.records import collect
from processor.store import SettlementStore
from settlement import ids
from tests.integration.settlement import Setup, accepted, another_instruction, fold_until, produce_to

BATCH = "t1-20261201-GBP"  # what accepted() routes to by default
EARLY = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # every batch of 1 December open
CLOSED = datetime(2026, 12, 1, 0, 1, 1, tzinfo=UTC)  # midnight + 60 s grace: the t1 batch of 1 December closes
MORNING = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # the t1 batch of 1 December closed, t0 still open
LATER = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)  # every batch closed and settled


def _count(setup: Setup, table: str) -> int:
    return setup.sql(f"SELECT count(*) FROM {table}")[0][0]


def _conflicts(setup: Setup, schema: str | None = None) -> list[tuple]:
    table = f"{schema}.conflicts" if schema else "conflicts"
    return setup.sql(
        "SELECT transaction_id, event_id, fingerprint, folded_fingerprint, amount::text, currency, batch_id,"
        f" topic, partition, kafka_offset FROM {table} ORDER BY topic, partition, kafka_offset"
    )


def _folded(setup: Setup, transaction_id: str) -> tuple:
    return setup.sql(
        "SELECT event_id, fingerprint, amount::text, batch_id, partition FROM transactions WHERE transaction_id = %s",
        transaction_id,
    )[0]


class Reader:
    """Reads chosen records and applies them as one poll batch, the way a processor would have polled them:
    the test decides what is read together and in which order."""

    def __init__(self, setup: Setup, store: SettlementStore) -> None:
        self.setup, self.store = setup, store
        self.consumer = Consumer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "group.id": "ptest-conflicts"})

    def read(self, window: str, partition: int, count: int) -> list:
        """The next `count` records of a partition (from where the store stands)."""
        key = (self.setup.gateway.topic(window), partition)
        self.consumer.assign([TopicPartition(*key, self.store.stored_offsets([key]).get(key, 0))])
        messages: list = []
        while len(messages) < count:
            polled = self.consumer.consume(count - len(messages), timeout=10)
            assert polled, f"{count} records of {key} not read within 10 s"
            messages += polled
        return messages

    def apply(self, messages: list, now: datetime, store: SettlementStore | None = None):
        store = store or self.store
        batch = collect(messages, lambda *_: True, store.calendar)
        return store.apply(batch, {key: store.stored_offsets([key]).get(key) for key in batch.ends}, now)

    def close(self) -> None:
        self.consumer.close()


def test_another_instruction_read_later_never_takes_the_place_of_the_transaction_even_better_placed(setup, caplog):
    partner = setup.gateway.partner
    first = accepted(partner, 1, amount="10.00", at="2026-11-30T10:00:05.000Z")
    unrelated = accepted(partner, 2, amount="7.00", at="2026-11-30T10:00:06.000Z")
    # accepted five seconds before the first, on a partition before it: the better copy by every rule of
    # the fold, read later while the batch is open
    second = another_instruction(first, "99.00", at="2026-11-30T10:00:00.000Z")
    produce_to(setup, [(first, 1), (unrelated, 1)])
    now = [EARLY.timestamp()]
    metrics = ProcessorMetrics()
    with setup.processor(lambda: now[0], metrics) as processor:
        fold_until(processor, lambda: _count(setup, "transactions") == 2, "the first instruction folded")
        produce_to(setup, [(second, 0)])
        with caplog.at_level(logging.WARNING, logger="processor"):
            fold_until(processor, lambda: _count(setup, "conflicts") == 1, "the second instruction recorded")
        processor.tick()
        assert setup.sql("SELECT status, totals FROM batches WHERE batch_id = %s", BATCH) == [("open", None)]
        assert _folded(setup, "txn-1") == (first.event_id, first.fingerprint, "10.00", BATCH, 1)
        now[0] = CLOSED.timestamp()
        processor.tick()
    # the batch closed with the first instruction only: 10.00 + 7.00, never 99.00
    assert setup.sql("SELECT status, transaction_count, totals FROM batches WHERE batch_id = %s", BATCH) == [
        ("closed", 2, {"USD": "17.00"})
    ]
    assert _folded(setup, "txn-1") == (first.event_id, first.fingerprint, "10.00", BATCH, 1)
    topic = setup.gateway.topic("t1")
    assert _conflicts(setup) == [
        ("txn-1", second.event_id, second.fingerprint, first.fingerprint, "99.00", "USD", BATCH, topic, 0, 0)
    ]
    assert _count(setup, "duplicates") == 0  # a conflict is not a duplicate
    assert metrics.registry.get_sample_value("settlement_processor_conflicts_total") == 1
    assert metrics.registry.get_sample_value("settlement_processor_duplicates_total") == 0
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING and "conflict" in r.getMessage()]
    for named in (partner, "txn-1", second.fingerprint, first.fingerprint):
        assert named in line.getMessage()
    setup.invariants()
    setup.assert_replay_matches()  # which reads both partitions at once: the better copy comes first there


def test_a_better_copy_of_the_same_instruction_still_takes_the_place_of_the_one_folded(setup):
    partner = setup.gateway.partner
    first = accepted(partner, 1, amount="10.00", at="2026-11-30T10:00:05.000Z")
    # the same instruction written again (the same fingerprint, another event), accepted earlier
    copy = msgspec.structs.replace(first, event_id=ids.uuid7(), occurred_at="2026-11-30T10:00:00.000Z")
    produce_to(setup, [(first, 1)])
    now = [EARLY.timestamp()]
    metrics = ProcessorMetrics()
    with setup.processor(lambda: now[0], metrics) as processor:
        fold_until(processor, lambda: _count(setup, "transactions") == 1, "the first copy folded")
        produce_to(setup, [(copy, 0)])
        fold_until(processor, lambda: _count(setup, "duplicates") == 1, "the better copy folded")
        now[0] = CLOSED.timestamp()
        processor.tick()
    assert _folded(setup, "txn-1") == (copy.event_id, first.fingerprint, "10.00", BATCH, 0)
    assert setup.sql("SELECT transaction_id, event_id, same_event, partition FROM duplicates") == [
        ("txn-1", first.event_id, False, 1)  # the copy it replaced
    ]
    assert setup.sql("SELECT transaction_count, totals FROM batches WHERE batch_id = %s", BATCH) == [
        (1, {"USD": "10.00"})
    ]
    assert _count(setup, "conflicts") == 0 and _count(setup, "read_steps") == 0
    assert metrics.registry.get_sample_value("settlement_processor_conflicts_total") == 0
    assert metrics.registry.get_sample_value("settlement_processor_duplicates_total") == 1
    setup.invariants()
    setup.assert_replay_matches()


def test_two_instructions_in_one_poll_batch_the_best_copy_is_the_transaction_whatever_the_read_order(setup):
    partner = setup.gateway.partner
    later = accepted(partner, 1, amount="10.00", at="2026-11-30T10:00:05.000Z")
    earlier = another_instruction(later, "99.00", at="2026-11-30T10:00:00.000Z")  # the best copy
    unrelated = accepted(partner, 2, amount="7.00")
    produce_to(setup, [(later, 1), (unrelated, 1), (earlier, 2)])
    calendar = SettlementCalendar.from_settings(setup.settings)
    store = setup.store()
    other = SettlementStore(setup.database, f"{setup.settings.database_schema}_reversed", calendar)
    other.migrate(fresh=True)
    reader = Reader(setup, store)
    try:
        messages = reader.read("t1", 1, 2) + reader.read("t1", 2, 1)
        applied = reader.apply(messages, EARLY)
        reversed_applied = reader.apply(messages[::-1], EARLY, other)  # the other partition first
        assert store.advance(LATER, ids.uuid7, watermark=LATER)["settled"] == 1
        assert other.advance(LATER, ids.uuid7, watermark=LATER)["settled"] == 1
        digests = store.snapshot().digest, other.snapshot().digest
    finally:
        reader.close()
        store.close()
        other.close()
    assert (applied.new, applied.duplicates, len(applied.conflicts)) == (2, 0, 1)
    assert [c.fingerprint for c in applied.conflicts] == [later.fingerprint]
    assert reversed_applied == applied
    assert digests[0] == digests[1]
    assert _folded(setup, "txn-1") == (earlier.event_id, earlier.fingerprint, "99.00", BATCH, 2)
    topic = setup.gateway.topic("t1")
    assert _conflicts(setup) == [
        ("txn-1", later.event_id, later.fingerprint, earlier.fingerprint, "10.00", "USD", BATCH, topic, 1, 0)
    ]
    assert _conflicts(setup, f"{setup.settings.database_schema}_reversed") == _conflicts(setup)
    assert setup.sql("SELECT transaction_count, totals FROM batches WHERE batch_id = %s", BATCH) == [
        (2, {"USD": "106.00"})
    ]
    setup.invariants()
    setup.assert_replay_matches()


def test_the_replay_reads_the_poll_batches_that_found_conflicts_as_they_were_read(setup):
    """Conflicts better placed than the transaction and read later, in one poll batch with it, and after its
    batch closed (late): the replay, which reads every partition at once, arrives at the same state,
    conflicts included, and the digest covers them."""
    partner = setup.gateway.partner
    one = accepted(partner, 1, amount="10.00", at="2026-11-30T10:00:05.000Z")
    one_better = another_instruction(one, "99.00", at="2026-11-30T10:00:00.000Z")
    one_late = another_instruction(one, "55.00", at="2026-11-30T10:00:30.000Z")
    two = accepted(partner, 2, amount="20.00", at="2026-11-30T10:00:10.000Z")
    two_copy = msgspec.structs.replace(two, event_id=ids.uuid7(), occurred_at="2026-11-30T10:00:01.000Z")
    three = accepted(partner, 3, window="t0", amount="30.00", at="2026-11-30T10:00:20.000Z")
    three_better = another_instruction(three, "33.00", at="2026-11-30T10:00:15.000Z")
    produce_to(
        setup,
        [(one, 1), (two, 1), (one_late, 1), (one_better, 0), (two_copy, 0), (three, 0), (three_better, 1)],
    )
    store = setup.store()
    reader = Reader(setup, store)
    try:
        reader.apply(reader.read("t1", 1, 2), EARLY)  # one, two
        reader.apply(reader.read("t1", 0, 2), EARLY)  # one_better: a conflict; two_copy takes two's place
        reader.apply(reader.read("t0", 0, 1) + reader.read("t0", 1, 1), EARLY)  # three and three_better together
        assert store.advance(MORNING, ids.uuid7, watermark=MORNING)["closed"] == 1  # the t1 batch of 1 December
        late = reader.apply(reader.read("t1", 1, 1), MORNING)  # one_late: its batch closed, so the late path
        assert store.advance(LATER, ids.uuid7, watermark=LATER)["closed"] == 2
    finally:
        reader.close()
        store.close()
    assert [(c.transaction_id, c.fingerprint) for c in late.conflicts] == [("txn-1", one_late.fingerprint)]
    t0, t1 = setup.gateway.topic("t0"), setup.gateway.topic("t1")
    next_t1, t0_batch = "t1-20261202-GBP", "t0-20261201-GBP"
    assert sorted(_conflicts(setup), key=lambda c: (c[0], c[7], c[8])) == [
        ("txn-1", one_better.event_id, one_better.fingerprint, one.fingerprint, "99.00", "USD", BATCH, t1, 0, 0),
        ("txn-1", one_late.event_id, one_late.fingerprint, one.fingerprint, "55.00", "USD", next_t1, t1, 1, 2),  # late
        ("txn-3", three.event_id, three.fingerprint, three_better.fingerprint, "30.00", "USD", t0_batch, t0, 0, 0),
    ]
    assert setup.sql("SELECT transaction_id, amount::text, partition FROM transactions ORDER BY 1") == [
        ("txn-1", "10.00", 1),
        ("txn-2", "20.00", 0),  # the better copy of the same instruction took its place
        ("txn-3", "33.00", 1),
    ]
    assert setup.sql("SELECT batch_id, transaction_count, totals FROM batches ORDER BY 1") == [
        (t0_batch, 1, {"USD": "33.00"}),
        (BATCH, 2, {"USD": "30.00"}),
        (next_t1, 0, {}),  # opened for the late conflict, which joined nothing
    ]
    assert _count(setup, "read_steps") == 3
    setup.invariants()
    setup.assert_replay_matches()
    replayed = f"{setup.settings.database_schema}_replay"
    assert _conflicts(setup, replayed) == _conflicts(setup)
    # the digest covers the conflicts: without one, the replayed state's differs from the live one
    store = setup.store()
    rebuilt = SettlementStore(setup.database, replayed, store.calendar)
    try:
        rebuilt.migrate()  # nothing to apply: its search path
        live = store.snapshot().digest
        assert rebuilt.snapshot().digest == live
        with psycopg.connect(setup.database, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {replayed}.conflicts WHERE transaction_id = 'txn-3'")
        assert rebuilt.snapshot().digest != live
    finally:
        rebuilt.close()
        store.close()
