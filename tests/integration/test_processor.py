"""The settlement processor against the real Kafka and PostgreSQL (and the gateway, for the HTTP path).

Each test folds topics of its own (a unique GATEWAY_TOPIC_PREFIX) into a schema of its own, so it
sees only its own records. After every test the invariants of DESIGN section 8 are checked.
"""

import re
import signal
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition
from litestar.testing import AsyncTestClient, TestClient

from gateway.api.app import create_app
from processor.metrics import ProcessorMetrics
from processor.records import collect
from processor.service import Processor
from settlement import ids
from settlement.events import (
    EVENT_ENCODER,
    TransactionAccepted,
)
from tests.conftest import transaction
from tests.integration.settlement import (
    Setup,
    accepted,
    fold_until,
    produce,
    read_batch_events,
    stop_process,
    wait_until,
)
from tests.servers import free_port

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


async def test_a_submission_is_batched_within_two_seconds_and_its_status_follows(setup):
    async with AsyncTestClient(create_app(setup.gateway)) as client:
        warm = await client.post(URL, json=transaction("warm"), headers=JSON)
        assert warm.status_code == 202, warm.text
        # only the gateway knows it yet (no processor runs): accepted, with the 202's Kafka record
        early = await client.get("/api/v1/transactions/txn_warm")
        assert early.status_code == 200, early.text
        meta = warm.json()["metadata"]
        assert early.json() == {
            "transaction_id": "txn_warm",
            "status": "accepted",
            "window": "t1",
            "value_date": meta["value_date"],
            "batch": meta["batch"],
            "amount": None,
            "currency": None,
            "kafka": {"topic": meta["topic"], "partition": meta["partition"], "offset": meta["offset"]},
            "steps": {"accepted_at": meta["accepted_at"], "batched_at": None, "settled_at": None},
            "late": False,
            "routed_batch": None,
            "routed_value_date": None,
        }
        setup.store().close()  # the schema, so the test can look before the processor has folded anything
        processor = setup.start()
        try:
            await _await_batched(setup, "txn_warm", 60)  # the processor has started and caught up
            body = transaction(uuid.uuid4().hex[:8], amount="1234.56")
            response = await client.post(URL, json=body, headers=JSON)
            assert response.status_code == 202, response.text
            accepted = time.monotonic()
            await _await_batched(setup, body["transaction_id"], 2.0)
            batched_in = time.monotonic() - accepted
            status = (await client.get(f"/api/v1/transactions/{body['transaction_id']}")).json()
            batch = await client.get(f"/api/v1/batches/{meta['batch']}")
            listing = await client.get("/api/v1/batches", params={"window": "t1", "limit": 1})
            unknown = await client.get("/api/v1/transactions/txn_nobody_sent")
        finally:
            stop_process(processor)
    meta = response.json()["metadata"]
    row = setup.sql(
        "SELECT status, batch_id, amount::text, topic, partition, kafka_offset FROM transactions "
        "WHERE transaction_id = %s",
        body["transaction_id"],
    )[0]
    assert row == ("batched", meta["batch"], "1234.56", meta["topic"], meta["partition"], meta["offset"])
    assert batched_in < 2.0
    assert status["status"] == "batched" and status["amount"] == "1234.56" and status["currency"] == "USD"
    assert status["kafka"] == {"topic": meta["topic"], "partition": meta["partition"], "offset": meta["offset"]}
    assert status["steps"]["accepted_at"] == meta["accepted_at"] and status["steps"]["batched_at"]
    # the batch's total includes it (250.00 + 1234.56), and only this partner's part is shown
    view = batch.json()
    assert batch.status_code == 200 and view["status"] == "open" and view["transaction_count"] == 2
    assert view["totals"] == {"USD": "1484.56"}
    assert view["net_positions"] is None and view["cross_currency_legs"] is None  # frozen at close only
    assert listing.status_code == 200 and [b["batch_id"] for b in listing.json()["batches"]] == [meta["batch"]]
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    # another partner sees none of it: 404, not 403
    other = msgspec.structs.replace(setup.gateway, partner="someone-else")
    async with AsyncTestClient(create_app(other)) as client:
        assert (await client.get(f"/api/v1/transactions/{body['transaction_id']}")).status_code == 404
        assert (await client.get(f"/api/v1/batches/{meta['batch']}")).status_code == 404
    setup.invariants()


async def _await_batched(setup: Setup, transaction_id: str, seconds: float) -> None:
    import asyncio

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if setup.sql("SELECT 1 FROM transactions WHERE transaction_id = %s", transaction_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{transaction_id} not batched within {seconds}s")


def test_a_fixed_clock_drives_a_t1_batch_to_closed_and_settled(setup):
    # USD -> GBP, value date Tuesday 1 December 2026: the batch closes at midnight starting it (London)
    # plus the grace, and settles at the GBP settlement time that day
    events = [accepted(setup.gateway.partner, n, amount=f"{n}.25") for n in range(1, 7)]
    events += [accepted(f"{setup.gateway.partner}-b", 7, amount="1000.00")]
    produce(setup, events)
    now = [datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()]
    store = setup.store()
    processor = Processor(setup.settings, store, ProcessorMetrics(), lambda: now[0])
    batch = "t1-20261201-GBP"

    def fold_all() -> None:
        fold_until(
            processor,
            lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] >= len(events),
            "every record folded",
        )

    try:
        processor.subscribe()
        fold_all()
        processor.tick()
        assert setup.sql("SELECT status FROM batches WHERE batch_id = %s", batch) == [("open",)]

        now[0] = datetime(2026, 12, 1, 0, 1, 1, tzinfo=UTC).timestamp()  # midnight + 60 s grace has passed
        processor.tick()
        status, count, totals, net, legs = setup.sql(
            "SELECT status, transaction_count, totals, net_positions, cross_currency_legs FROM batches"
            " WHERE batch_id = %s",
            batch,
        )[0]
        assert status == "closed" and count == 7
        assert totals == {"USD": "1022.50"}  # 1.25 + 2.25 + ... + 6.25 + 1000.00, exactly
        # USD -> GBP only: no net position (no FX rate to net by), every leg listed in its source currency
        assert net == {}
        leg = {"source_currency": "USD", "destination_account": "acct-dest", "destination_currency": "GBP", "count": 1}
        assert legs[setup.gateway.partner] == [
            {**leg, "source_account": f"acct-{n}", "amount": f"{n}.25"} for n in range(1, 7)
        ]
        assert legs[f"{setup.gateway.partner}-b"] == [{**leg, "source_account": "acct-0", "amount": "1000.00"}]

        # a record for the closed batch (accepted before its cut-off, read after it closed): late, on to
        # the next t1 batch of GBP, never in the frozen totals of the first
        produce(setup, [accepted(setup.gateway.partner, 8, amount="5.00")])
        events.append(None)  # type: ignore[arg-type]
        fold_all()
        late_path = (
            "SELECT late, status, batch_id, value_date::text, routed_batch_id FROM transactions"
            " WHERE transaction_id = 'txn-8'"
        )
        assert setup.sql(late_path) == [(True, "batched", "t1-20261202-GBP", "2026-12-02", batch)]
        processor.tick()
        assert setup.sql("SELECT transaction_count, totals, late_count FROM batches WHERE batch_id = %s", batch) == [
            (7, {"USD": "1022.50"}, 1)
        ]

        now[0] = datetime(2026, 12, 1, 16, 0, tzinfo=UTC).timestamp()  # 16:00 London: settlement time
        processor.tick()
        assert setup.sql("SELECT status FROM batches WHERE batch_id = %s", batch) == [("settled",)]
        assert setup.sql("SELECT status, count(*) FROM transactions GROUP BY 1 ORDER BY 1") == [
            ("batched", 1),  # the late one, waiting for its new batch
            ("settled", 7),
        ]

        now[0] = datetime(2026, 12, 2, 16, 0, tzinfo=UTC).timestamp()  # the next batch closes and settles
        processor.tick()
        assert setup.sql(late_path) == [(True, "settled", "t1-20261202-GBP", "2026-12-02", batch)]
        assert setup.sql(
            "SELECT status, transaction_count, totals FROM batches WHERE batch_id = 't1-20261202-GBP'"
        ) == [("settled", 1, {"USD": "5.00"})]
        # the partner sees where it went and why, in the status API
        with TestClient(create_app(setup.gateway)) as client:
            view = client.get("/api/v1/transactions/txn-8").json()
            moved_from = client.get(f"/api/v1/batches/{batch}").json()
        assert (view["status"], view["late"], view["batch"], view["value_date"]) == (
            "settled",
            True,
            "t1-20261202-GBP",
            "2026-12-02",
        )
        assert (view["routed_batch"], view["routed_value_date"]) == (batch, "2026-12-01")
        assert moved_from["late_transactions"] == ["txn-8"] and moved_from["transaction_count"] == 6
    finally:
        processor.close()
        store.close()
    published = read_batch_events(setup)
    kinds = [(e["event_type"], e["batch_id"], h["ce_type"]) for e, h in published]
    for batch_id in (batch, "t1-20261202-GBP"):  # in order per batch (one partition each), once each
        assert [kind for kind in kinds if kind[1] == batch_id] == [
            ("BatchClosed", batch_id, b"com.settlement.batch.closed.v1"),
            ("BatchSettled", batch_id, b"com.settlement.batch.settled.v1"),
        ]
    assert len(kinds) == 4
    closed = next(e for e, _ in published if e["batch_id"] == batch and e["event_type"] == "BatchClosed")
    assert closed["totals"] == {"USD": "1022.50"} and closed["transaction_count"] == 7
    assert closed["late_arrivals"] == []
    next_closed = next(e for e, _ in published if e["batch_id"] != batch and e["event_type"] == "BatchClosed")
    assert next_closed["late_arrivals"] == [
        {"partner": setup.gateway.partner, "transaction_id": "txn-8", "routed_batch_id": batch}
    ]
    assert all(h["ce_id"].decode() == e["event_id"] and h["ce_subject"] == e["batch_id"].encode() for e, h in published)
    setup.invariants()


def test_duplicates_and_kills_mid_apply_leave_every_invariant_true(setup):
    partner = setup.gateway.partner
    events = [accepted(partner, n, window=("t0", "t1", "rtgs")[n % 3], amount=f"{n}.01") for n in range(3000)]
    twice = set(range(0, 3000, 10))  # 300 records written twice (a producer retry)
    rerouted = [  # the same transactions again under another window (after an uncertain delivery)
        msgspec.structs.replace(e, event_id=ids.uuid7(), routing=accepted(partner, 0, window="t1").routing)
        for e in events[5:3000:50]
        if e.routing.window != "t1"
    ]
    produce(setup, events + rerouted, twice)
    for kill in range(5):
        processor = setup.start(f"killed-{kill}")
        time.sleep(1.5 + kill * 0.4)  # somewhere in the middle of folding the backlog
        processor.send_signal(signal.SIGKILL)
        processor.wait()
    processor = setup.start("last")
    try:
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] == 3000, 90, "3000 transactions folded")
        expected_duplicates = len(twice) + len(rerouted)
        wait_until(lambda: setup.sql("SELECT count(*) FROM duplicates")[0][0] == expected_duplicates, 30, "duplicates")
    finally:
        stop_process(processor)
    assert setup.sql("SELECT same_event, count(*) FROM duplicates GROUP BY 1 ORDER BY 1") == [
        (False, len(rerouted)),
        (True, len(twice)),
    ]
    (total,) = setup.sql("SELECT sum(amount)::text FROM transactions")[0]
    assert total == str(sum(Decimal(f"{n}.01") for n in range(3000)))  # each counted once, exactly
    setup.invariants()
    # the state is the fold of the log: a replay from offset 0 gives the same digest
    setup.assert_replay_matches()


def test_the_transaction_a_copy_becomes_depends_on_the_log_and_the_clock_not_on_the_read_order(setup):
    """Copies of transactions read in an adverse order, batches closing and settling between reads: the
    live state is what the rules say, and the replay (which reads the partitions in its own order and
    takes the same lifecycle steps where they were taken) arrives at the same digest."""
    partner = setup.gateway.partner

    def copy(event: TransactionAccepted, window: str) -> TransactionAccepted:
        return msgspec.structs.replace(event, event_id=ids.uuid7(), routing=accepted(partner, 0, window=window).routing)

    a_t0 = accepted(partner, 1, window="t0")  # earlier, but read after its later copy's batch closed: frozen
    b_t0 = accepted(partner, 2, window="t0", value_date="2026-12-02")  # its later copy is read first, late
    d_t0 = accepted(partner, 4, window="t0")  # earlier, but read after its later rtgs copy settled
    d_rtgs, a_t1, c, b_t1 = copy(d_t0, "rtgs"), copy(a_t0, "t1"), accepted(partner, 3, window="t1"), copy(b_t0, "t1")
    log = [a_t0, b_t0, d_t0, d_rtgs, a_t1, c, b_t1]  # record timestamps one second apart, in this order
    producer = Producer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "enable.idempotence": True})
    base = int(datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp() * 1000)
    for n, event in enumerate(log):
        topic = setup.gateway.topic(event.routing.window)
        producer.produce(topic, EVENT_ENCODER.encode(event), partition=0, timestamp=base + n * 1000)
    assert producer.flush(30) == 0
    store = setup.store()
    reader = Consumer({"bootstrap.servers": setup.gateway.kafka_bootstrap, "group.id": "ptest-order"})

    def fold(window: str, count: int, now: datetime) -> None:
        key = (setup.gateway.topic(window), 0)
        start = store.stored_offsets([key]).get(key)
        reader.assign([TopicPartition(*key, start or 0)])
        messages = reader.consume(count, timeout=10)
        assert len(messages) == count
        store.apply(collect(messages, lambda *_: True, store.calendar), {key: start}, now)

    early = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    morning = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # t1 of 1 Dec closed, rtgs open, t0 before its cut-off
    try:
        fold("rtgs", 1, early)  # d_rtgs
        fold("t1", 2, early)  # a_t1, c
        assert store.advance(morning, ids.uuid7, watermark=morning) == {"closed": 1, "settled": 0, "rtgs_settled": 1}
        fold("t1", 1, morning)  # b_t1: its batch has closed, late: on to the next t1 batch
        assert setup.sql("SELECT late, batch_id, routed_batch_id FROM transactions WHERE transaction_id = 'txn-2'") == [
            (True, "t1-20261202-GBP", "t1-20261201-GBP")
        ]
        fold("t0", 3, morning)  # a_t0 (A frozen in t1), b_t0 (on time: takes B's place), d_t0 (D settled)
        later = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)  # every batch closed and settled
        assert store.advance(later, ids.uuid7, watermark=later) == {"closed": 4, "settled": 5, "rtgs_settled": 0}
    finally:
        reader.close()
        store.close()
    assert setup.sql("SELECT transaction_id, batch_id, late, status FROM transactions ORDER BY 1") == [
        ("txn-1", "t1-20261201-GBP", False, "settled"),
        ("txn-2", "t0-20261202-GBP", False, "settled"),
        ("txn-3", "t1-20261201-GBP", False, "settled"),
        ("txn-4", "rtgs-20261201-GBP", False, "settled"),
    ]
    assert setup.sql("SELECT transaction_id, batch_id FROM duplicates ORDER BY 1") == [
        ("txn-1", "t0-20261201-GBP"),
        ("txn-2", "t1-20261202-GBP"),  # its late copy, on the late path
        ("txn-4", "t0-20261201-GBP"),
    ]
    assert setup.sql("SELECT batch_id, late_count, transaction_count FROM batches ORDER BY 1") == [
        ("rtgs-20261201-GBP", 0, 1),
        ("t0-20261201-GBP", 0, 0),
        ("t0-20261202-GBP", 0, 1),
        ("t1-20261201-GBP", 0, 2),  # B's late copy left it, and was replaced by its copy on time
        ("t1-20261202-GBP", 0, 0),  # the late copy's batch, empty once it was replaced
    ]
    setup.invariants()
    setup.assert_replay_matches()


def test_two_instances_split_the_partitions_and_one_takes_over(setup):
    partner = setup.gateway.partner
    first = [accepted(partner, n, window=("t0", "t1", "rtgs")[n % 3]) for n in range(600)]
    setup.store().close()  # the schema exists before the instances race to create it
    port = free_port()
    a, b = setup.start("a"), setup.start("b", PROCESSOR_METRICS_PORT=str(port))
    try:
        produce(setup, first)
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] == 600, 60, "600 folded by two")
        wait_until(lambda: len(setup.members()) == 2 and all(setup.members()), 30, "both instances holding partitions")
        split = setup.members()
        assert all(split) and sum(map(len, split)) == 9 and set().union(*split) == setup.partitions()
        a.send_signal(signal.SIGKILL)
        a.wait()
        second = [accepted(partner, n, window=("t0", "t1", "rtgs")[n % 3]) for n in range(600, 1200)]
        produce(setup, second)
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] == 1200, 90, "1200 folded by one")
        assert setup.members() == [setup.partitions()]  # the survivor holds every partition
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as ready:
            assert ready.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as scrape:
            metrics = scrape.read().decode()
        applied = re.search(r"^settlement_processor_events_applied_total (\S+)$", metrics, re.MULTILINE)
        assert applied and 600 <= float(applied[1]) <= 1200  # what the survivor folded, counted
        assert 'settlement_processor_consumer_lag{partition="0",topic="' in metrics
    finally:
        for process in (a, b):
            if process.poll() is None:
                stop_process(process)
    assert setup.sql("SELECT count(*) FROM duplicates") == [(0,)]
    (offsets,) = setup.sql("SELECT sum(next_offset) FROM consumed")[0]
    assert offsets == 1200  # every record applied exactly once, none twice
    setup.invariants()
    # the documented replay command agrees with the live state
    replay = setup.start("replay", "replay")
    assert replay.wait(120) == 0, (setup.logs / "replay.log").read_text()[-2000:]
    assert "live" in (setup.logs / "replay.log").read_text()
