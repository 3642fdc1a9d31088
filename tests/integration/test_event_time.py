"""Event time decides which batch a payment settles in, never when the processor happened to read it.

Against the real Kafka, PostgreSQL and (for the HTTP path) Redis, with fixed clocks: a processor that is
stopped across a cut-off (gracefully or SIGKILLed), one that lags behind the log while its clock passes
the cut-off, and two instances with a rebalance at the cut-off all close the batch with every payment
the gateway accepted before its cut-off, and none late; the replay arrives at the same digest.
"""

import signal
import time
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app
from processor.metrics import ProcessorMetrics
from processor.service import Processor
from tests.conftest import transaction
from tests.integration.settlement import accepted, fold_until, produce, stop_process, wait_until

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}
BEFORE_CUTOFF = "2026-12-01T15:00:00+00:00"  # Tuesday; the USD t0 cut-off is 18:00 New York, 23:00Z
NEXT_DAY = "2026-12-02T00:00:00+00:00"  # past the cut-off and the 60 s grace
BATCH = "t0-20261201-USD"
CLOSED = ("closed", "settled")  # a batch whose settlement time has passed too settles at the same step


def _batch(setup, batch_id: str) -> tuple:
    rows = setup.sql("SELECT status, transaction_count, totals, late_count FROM batches WHERE batch_id = %s", batch_id)
    return rows[0] if rows else (None, None, None, None)


async def _submit(client, unique: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = transaction(
            f"{unique}-{i}",
            amount=f"{10 + i}.25",
            destination_currency="USD",
            destination_account=f"acct_us_{i}",
            settlement_window="t0",
        )
        response = await client.post(URL, json=body, headers=JSON)
        assert response.status_code == 202, response.text
        assert response.json()["metadata"]["batch"] == BATCH
        ids.append(body["transaction_id"])
    return ids


def _folded(setup, ids: list[str]) -> bool:
    (n,) = setup.sql("SELECT count(*) FROM transactions WHERE transaction_id = ANY(%s)", ids)[0]
    return n == len(ids)


@pytest.mark.parametrize("stopped_by", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "sigkill"])
async def test_a_processor_stopped_across_the_cut_off_closes_the_batch_with_every_payment_accepted_before_it(
    setup, unique, stopped_by
):
    gateway = msgspec.structs.replace(setup.gateway, fixed_time=BEFORE_CUTOFF)
    async with AsyncTestClient(create_app(gateway)) as client:
        setup.store().close()
        processor = setup.start("before", GATEWAY_FIXED_TIME=BEFORE_CUTOFF)
        try:
            first = await _submit(client, f"{unique}-a", 5)
            wait_until(lambda: _folded(setup, first), 60, "the first five folded")
        finally:
            processor.send_signal(stopped_by)
            processor.wait(30)
        # the gateway goes on accepting for the batch while no processor runs
        second = await _submit(client, f"{unique}-b", 5)
    assert _batch(setup, BATCH)[0] == "open"
    processor = setup.start("after", GATEWAY_FIXED_TIME=NEXT_DAY)
    try:
        wait_until(lambda: _batch(setup, BATCH)[0] in CLOSED, 60, "the batch closed")
        assert processor.poll() is None
    finally:
        stop_process(processor)
    status, count, totals, late_count = _batch(setup, BATCH)
    assert status in CLOSED
    assert count == 10 and late_count == 0
    assert totals == {"USD": str(sum(Decimal(f"{10 + i}.25") for i in range(5)) * 2)}
    assert setup.sql("SELECT count(*) FROM transactions WHERE late") == [(0,)]
    assert setup.sql("SELECT count(*) FROM transactions WHERE batch_id = %s", BATCH) == [(10,)]
    assert _folded(setup, first + second)
    # USD -> USD: multilateral net positions per account, summing to exactly zero
    [(net, legs)] = setup.sql("SELECT net_positions, cross_currency_legs FROM batches WHERE batch_id = %s", BATCH)
    usd = net[setup.gateway.partner]["USD"]
    assert len(usd) == 15 and sum(map(Decimal, usd.values())) == 0 and legs == {}
    assert {account: usd[account] for account in usd if account.startswith("acct_us_")} == {
        f"acct_us_{i}": str(Decimal(f"{10 + i}.25") * 2) for i in range(5)
    }
    assert usd[f"acct_usa_{unique}-a-0"] == "-10.25"
    setup.invariants()
    setup.assert_replay_matches()


def test_a_processor_lagging_past_the_cut_off_closes_by_what_it_has_read_not_by_its_clock(setup):
    """Its clock passes the cut-off and the grace while five payments accepted before the cut-off are
    still unread in their partitions: the batch waits for them, then closes with all ten."""
    partner = setup.gateway.partner
    at = "2026-12-01T12:00:00.000Z"  # the GBP t0 cut-off is 17:40 London (17:40Z in December)
    batch = "t0-20261201-GBP"
    produce(setup, [accepted(partner, n, window="t0", at=at) for n in range(5)])
    now = [datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC).timestamp()]
    store = setup.store()
    processor = Processor(setup.settings, store, ProcessorMetrics(), lambda: now[0])
    try:
        processor.subscribe()
        fold_until(processor, lambda: setup.sql("SELECT count(*) FROM transactions") == [(5,)], "the first five folded")
        processor.tick()
        # five more accepted before the cut-off, not read yet; the processor's clock goes past the close
        produce(setup, [accepted(partner, n, window="t0", at=at) for n in range(5, 10)])
        now[0] = datetime(2026, 12, 2, 0, 0, tzinfo=UTC).timestamp()
        for _ in range(5):
            processor.tick()  # lagging: ticks without reading
        assert _batch(setup, batch)[0] == "open", "closed before the records accepted in time were read"
        lagging_at = processor.now()
        assert store.overdue(lagging_at) == 1  # past its settlement time, not settled: operators are told
        fold_until(
            processor, lambda: setup.sql("SELECT count(*) FROM transactions") == [(10,)], "the other five folded"
        )
        processor.tick()
        assert _batch(setup, batch)[0] in CLOSED and _batch(setup, batch)[1] == 10
        assert setup.sql("SELECT count(*) FROM transactions WHERE late") == [(0,)]
        assert store.overdue(lagging_at) == 0
    finally:
        processor.close()
        store.close()
    setup.invariants()
    setup.assert_replay_matches()


def test_two_instances_and_a_rebalance_at_the_cut_off_close_the_batch_only_once_every_partition_has_passed_it(
    setup,
):
    """A and B fold before the cut-off; A leaves; C starts with a clock past the close. B still holds
    partitions whose progress is before the cut-off, so the batch waits for B; once B leaves and C holds
    every partition, it closes with every payment, none late."""
    partner = setup.gateway.partner
    at = "2026-12-01T12:00:00.000Z"
    batch = "t0-20261201-GBP"
    setup.store().close()
    before = "2026-12-01T12:00:05+00:00"
    a, b = setup.start("a", GATEWAY_FIXED_TIME=before), setup.start("b", GATEWAY_FIXED_TIME=before)
    c = None
    try:
        produce(setup, [accepted(partner, n, window="t0", at=at) for n in range(300)])
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(300,)], 60, "300 folded by two")
        wait_until(lambda: len(setup.members()) == 2 and all(setup.members()), 30, "both instances holding partitions")
        stop_process(a)  # a deploy: A leaves the group, its partitions move at once
        produce(setup, [accepted(partner, n, window="t0", at=at) for n in range(300, 600)])
        c = setup.start("c", GATEWAY_FIXED_TIME=NEXT_DAY)
        wait_until(lambda: setup.sql("SELECT count(*) FROM transactions") == [(600,)], 90, "600 folded")
        wait_until(lambda: len(setup.members()) == 2 and all(setup.members()), 30, "B and C holding partitions")
        time.sleep(3)  # many ticks of C (every 0.2 s), its own partitions read to their end at the next day
        assert _batch(setup, batch)[0] == "open", "closed while B's partitions had not passed the cut-off"
        stop_process(b)
        wait_until(lambda: _batch(setup, batch)[0] in CLOSED, 60, "the batch closed once C held every partition")
        assert c.poll() is None
    finally:
        for process in (a, b, c):
            if process is not None and process.poll() is None:
                stop_process(process)
    assert _batch(setup, batch)[0] in CLOSED and _batch(setup, batch)[1] == 600
    assert setup.sql("SELECT count(*) FROM transactions WHERE late") == [(0,)]
    setup.invariants()
    setup.assert_replay_matches()
