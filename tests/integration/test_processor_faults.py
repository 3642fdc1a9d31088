"""The processor survives its inputs and its dependencies (real Kafka and PostgreSQL).

Poison records are quarantined with their reasons while everything around them folds; PostgreSQL and
Kafka SIGKILLed and restarted under load never end the process, it is ready again within 10 s of each
one's return and every invariant holds; with Kafka frozen the lifecycle goes on and each batch event
reaches the batches topic exactly once.
"""

import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processor.metrics import ProcessorMetrics
from processor.service import Processor
from settlement.events import EVENT_ENCODER, event_time_ms
from settlement.topics import create_topics, finite_retention
from tests.conftest import KAFKA_PIDFILE
from tests.integration.settlement import accepted, fold_until, produce, read_batch_events, stop_process, wait_until
from tests.processes import stop
from tests.servers import free_port


def _poison(partner: str) -> list[tuple[str, bytes]]:
    """Records of at least ten kinds that must never reach a total, each with a word its reason holds."""
    good = accepted(partner, 900_000)
    txn, routing = good.transaction, good.routing

    def bad(**changes) -> bytes:
        transaction = msgspec.structs.replace(txn, **changes.pop("transaction", {}))
        route = msgspec.structs.replace(routing, **changes.pop("routing", {}))
        return EVENT_ENCODER.encode(msgspec.structs.replace(good, transaction=transaction, routing=route, **changes))

    return [
        ("amount", bad(transaction={"amount": "abc"})),
        ("amount", bad(transaction={"amount": "0"})),
        ("amount", bad(transaction={"amount": "NaN"})),
        ("amount", bad(transaction={"amount": "Infinity"})),
        ("amount", bad(transaction={"amount": "-5.00"})),
        ("amount", bad(transaction={"amount": "1e3"})),
        ("amount", bad(transaction={"amount": "1.234"})),  # more decimals than USD has
        ("amount", bad(transaction={"amount": "1" + "0" * 30})),
        ("source_currency", bad(transaction={"source_currency": "XXX"})),
        ("destination_account", bad(transaction={"destination_account": good.transaction.source_account})),
        ("transaction_id", bad(transaction={"transaction_id": "bad id\twith\ttabs"})),
        ("routing.window", bad(routing={"window": "t9", "batch": "t9-20261201-GBP"})),
        ("routing.value_date", bad(routing={"value_date": "2026-13-45"})),
        ("routing.batch", bad(routing={"batch": "t1-20261201-EUR"})),
        ("routing.reason", bad(routing={"reason": "because"})),
        ("fingerprint", bad(fingerprint="xyz")),
        ("occurred_at", bad(occurred_at="yesterday")),
        ("unknown event", bad(event_type="TransactionReversed")),
        ("not a TransactionAccepted", b"{not json"),
        ("not a TransactionAccepted", b'{"event_type": "TransactionAccepted"}'),
    ]


def test_poison_records_are_quarantined_with_their_reasons_and_everything_around_them_folds(setup):
    partner = setup.gateway.partner
    good = [accepted(partner, n, window=("t0", "t1", "rtgs")[n % 3], amount=f"{n}.01") for n in range(2000)]
    poison = _poison(partner)
    producer = Producer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "enable.idempotence": True})
    topic = setup.gateway.topic("t1")
    for n, event in enumerate(good):
        if n % 100 == 50:  # interleaved: every partition of t1 gets some, between good records
            _, value = poison.pop()
            producer.produce(topic, value, partition=n // 100 % 3, timestamp=event_time_ms(event))
        producer.produce(
            setup.gateway.topic(event.routing.window),
            EVENT_ENCODER.encode(event),
            event.transaction.source_account.encode(),
            timestamp=event_time_ms(event),
        )
    assert producer.flush(30) == 0 and not poison
    setup.store().close()  # the schema, so the test can look before the processor has folded anything
    processor = setup.start()
    try:
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(2000,)], 90, "2000 good ones folded")
        wait_until(lambda: setup.sql("SELECT count(*) FROM unreadable") == [(20,)], 30, "20 quarantined")
        assert processor.poll() is None, "the processor exited"
    finally:
        stop_process(processor)
    reasons = [reason for (reason,) in setup.sql("SELECT reason FROM unreadable ORDER BY kafka_offset")]
    for word, _ in _poison(partner):
        assert any(word in reason for reason in reasons), (word, reasons)
    assert setup.sql("SELECT count(DISTINCT reason) FROM unreadable")[0][0] >= 10
    assert setup.sql("SELECT sum(amount)::text FROM transactions") == [
        (str(sum(Decimal(f"{n}.01") for n in range(2000))),)
    ]
    setup.invariants()
    setup.assert_replay_matches()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _seconds_until_ready(port: int, limit: float) -> float:
    started = time.monotonic()
    wait_until(lambda: _ready(port), limit, f"the processor ready within {limit:g} s")
    return time.monotonic() - started


class Load:
    """A steady stream of accepted transactions (as the gateway writes them) into the window topics,
    through outages: the producer holds what the broker cannot take yet."""

    def __init__(self, setup, per_second: int = 100) -> None:
        self.setup, self.per_second, self.sent = setup, per_second, 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.producer = Producer(
            {
                "bootstrap.servers": setup.gateway.kafka_bootstrap,
                "enable.idempotence": True,
                "message.timeout.ms": 0,  # through the outage
                "logger": logging.getLogger("tests.load"),  # not the console: the broker is down on purpose
            }
        )

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._thread.join()
        assert self.producer.flush(120) == 0, "the load's records not all in Kafka"

    def _run(self) -> None:
        partner = self.setup.gateway.partner
        while not self.stopping.wait(1 / 20):
            for _ in range(self.per_second // 20):
                event = accepted(partner, self.sent, window=("t0", "t1", "rtgs")[self.sent % 3], amount="1.50")
                self.producer.produce(
                    self.setup.gateway.topic(event.routing.window),
                    EVENT_ENCODER.encode(event),
                    event.transaction.source_account.encode(),
                    timestamp=event_time_ms(event),
                )
                self.sent += 1
            self.producer.poll(0)


def _statuses(setup) -> dict[str, str]:
    return dict(setup.sql("SELECT transaction_id, status FROM transactions"))


def _forward(before: dict[str, str], after: dict[str, str]) -> None:
    """No status moves backwards, and nothing folded disappears."""
    order = {"batched": 0, "settled": 1}
    assert set(before) <= set(after)
    assert all(order[after[txn]] >= order[status] for txn, status in before.items())


def test_the_processor_outlives_postgres_and_kafka_killed_under_load(setup, postgres_server, kafka_broker):
    port = free_port()
    setup.store().close()
    # a clock past the t0 and rtgs closes of the records' value date: batches close and settle under load
    processor = setup.start(PROCESSOR_METRICS_PORT=str(port), GATEWAY_FIXED_TIME="2026-12-01T20:00:00+00:00")
    recovery = {}
    try:
        _seconds_until_ready(port, 60)
        with Load(setup) as load:
            wait_until(lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] >= 200, 30, "folding under load")
            before = _statuses(setup)
            postgres_server.kill()
            time.sleep(3)
            assert not _ready(port), "ready while PostgreSQL is down"
            postgres_server.start()
            recovery["postgres"] = _seconds_until_ready(port, 10)
            wait_until(
                lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] >= load.sent - 200, 30, "catching up"
            )
            middle = _statuses(setup)
            _forward(before, middle)
            kafka_broker.kill()
            time.sleep(3)
            assert not _ready(port), "ready while Kafka is down"
            kafka_broker.start()
            recovery["kafka"] = _seconds_until_ready(port, 10)
            time.sleep(2)
        sent = load.sent
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(sent,)], 90, f"all {sent} folded")
        assert processor.poll() is None, "the processor exited"
        _forward(middle, _statuses(setup))
    finally:
        stop_process(processor)
    # every record applied exactly once: a SIGKILLed broker may keep a producer retry as a second copy
    # of the same event (recorded in duplicates, same_event), never the same record folded twice
    assert setup.sql("SELECT count(*) FROM duplicates WHERE NOT same_event") == [(0,)]
    assert setup.sql("SELECT count(*) FROM unreadable") == [(0,)]
    (records,) = setup.sql("SELECT sum(next_offset) FROM consumed")[0]
    assert records == sent + setup.sql("SELECT count(*) FROM duplicates")[0][0]
    assert setup.sql("SELECT count(*) FROM batches WHERE status <> 'open'")[0][0] > 0
    print(f"ready again after the dependency returned: {recovery}")
    setup.invariants()
    setup.assert_replay_matches()


def test_with_kafka_frozen_the_lifecycle_goes_on_and_each_batch_event_is_published_once(setup, kafka_broker):
    partner = setup.gateway.partner
    produce(setup, [accepted(partner, n, amount="2.00") for n in range(20)])  # t1-20261201-GBP
    batch = "t1-20261201-GBP"
    now = [datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()]
    store = setup.store()
    processor = Processor(setup.settings, store, ProcessorMetrics(), lambda: now[0])
    broker = int(KAFKA_PIDFILE.read_text())
    try:
        processor.subscribe()
        fold_until(processor, lambda: setup.sql("SELECT count(*) FROM transactions") == [(20,)], "twenty folded")
        now[0] = datetime(2026, 12, 1, 0, 1, 1, tzinfo=UTC).timestamp()  # midnight London + the grace
        processor.observe(processor.now())  # every partition read to its end, as of the close
        stop(broker)  # Kafka frozen: requests sit unanswered
        try:
            took = []
            for clock in (now[0], datetime(2026, 12, 1, 16, 0, tzinfo=UTC).timestamp()):  # close, then settle
                now[0] = clock
                for _ in range(2):
                    started = time.monotonic()
                    processor.step(timeout=0.5)  # the fold does not wait for the broker either
                    processor.tick()
                    took.append(time.monotonic() - started)
            assert _batch_status(setup, batch) == "settled"
            assert max(took) < 5, took  # never a stall of the old 10 s flush per tick
            assert setup.sql("SELECT count(*) FROM batch_events WHERE published_at IS NULL") == [(2,)]
        finally:
            os.kill(broker, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while setup.sql("SELECT count(*) FROM batch_events WHERE published_at IS NULL") != [(0,)]:
            processor.step(timeout=0.2)
            processor.tick()
            assert time.monotonic() < deadline, "batch events not published after Kafka came back"
    finally:
        processor.close()
        store.close()
    kinds = sorted((e["event_type"], e["batch_id"], h["ce_id"]) for e, h in read_batch_events(setup))
    assert [(kind, batch_id) for kind, batch_id, _ in kinds] == [("BatchClosed", batch), ("BatchSettled", batch)]
    assert len({ce_id for *_, ce_id in kinds}) == 2  # each once, under its own id
    setup.invariants()
    setup.assert_replay_matches()


def _batch_status(setup, batch_id: str) -> str | None:
    rows = setup.sql("SELECT status FROM batches WHERE batch_id = %s", batch_id)
    return rows[0][0] if rows else None


def test_a_record_the_database_refuses_is_quarantined_and_the_rest_of_its_poll_batch_folds(setup, monkeypatch):
    """Should a record pass the checks and still be refused by PostgreSQL (here a NaN amount, with the
    checks switched off), the poll batch is applied again record by record: NaN never reaches a total."""
    monkeypatch.setattr("processor.records.problem", lambda event, calendar: None)
    partner = setup.gateway.partner
    events = [accepted(partner, n, amount="3.00") for n in range(10)]
    events[4] = accepted(partner, 4, amount="NaN")
    produce(setup, events)
    store = setup.store()
    processor = Processor(setup.settings, store, ProcessorMetrics(), time.time)
    try:
        processor.subscribe()
        fold_until(
            processor, lambda: setup.sql("SELECT count(*) FROM unreadable") == [(1,)], "the NaN record quarantined"
        )
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(9,)], 10, "the other nine folded")
    finally:
        processor.close()
        store.close()
    [(reason,)] = setup.sql("SELECT reason FROM unreadable")
    assert reason.startswith("refused by the database") and "transactions_amount_finite" in reason
    assert setup.sql("SELECT sum(amount)::text FROM transactions") == [("27.00",)]


def test_window_topics_keep_every_record_and_a_processor_refuses_to_start_on_one_that_deletes(setup, stack):
    assert finite_retention(stack.kafka_bootstrap, setup.settings.topics) == []  # as ensure_topics made them
    short = msgspec.structs.replace(setup.gateway, topic_prefix=setup.gateway.topic_prefix + "short.")
    week = {"retention.ms": str(7 * 24 * 3600 * 1000)}
    topics = [short.topic(window) for window in ("rtgs", "t0", "t1")]
    create_topics(stack.kafka_bootstrap, topics, 3, 1, 15.0, week)
    processor = setup.start("short", GATEWAY_TOPIC_PREFIX=short.topic_prefix)
    assert processor.wait(60) == 2
    log = (setup.logs / "short.log").read_text()
    assert "window topics that delete records" in log and "retention.ms=604800000" in log


def test_replay_refuses_when_the_log_no_longer_starts_at_offset_0(setup):
    produce(setup, [accepted(setup.gateway.partner, n) for n in range(6)])
    setup.store().close()
    processor = setup.start()
    try:
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(6,)], 60, "folded")
    finally:
        stop_process(processor)
    topic = setup.gateway.topic("t1")
    admin = AdminClient({"bootstrap.servers": setup.gateway.kafka_bootstrap})
    deleted = admin.delete_records([TopicPartition(topic, p, 1) for p in range(3)])
    for future in deleted.values():
        future.result(10)
    replay = setup.start("replay", "replay")
    assert replay.wait(120) == 2
    log = (setup.logs / "replay.log").read_text()
    assert "replay refused: the log no longer starts at offset 0" in log and f"{topic}[0] starts at 1" in log


def test_supervise_starts_a_killed_processor_again_and_stops_with_it(setup):
    port = free_port()
    setup.store().close()
    supervisor = setup.start("supervised", "supervise", PROCESSOR_METRICS_PORT=str(port))
    try:
        _seconds_until_ready(port, 60)
        [child] = _children(supervisor.pid)
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: _children(supervisor.pid) not in ([], [child]), 20, "a new processor started")
        _seconds_until_ready(port, 60)
        produce(setup, [accepted(setup.gateway.partner, n) for n in range(3)])
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(3,)], 30, "the new one folds")
        [successor] = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        assert not os.path.exists(f"/proc/{successor}")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert "starting it again in 1 s" in (setup.logs / "supervised.log").read_text()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]
