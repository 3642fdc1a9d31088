"""The partner's webhook deliveries (gateway/api/webhooks.py) against the real PostgreSQL, behind the partner
registry's keys: the list, newest first and cursor-paginated, filtered and scoped to the partner; and the
resend, the one write the gateway makes to the ledger, which the deliverer's claim then takes as the
first try of a new retry schedule.

The rows are written here as the processor (the events) and the deliverer (the attempts and the outcome)
would leave them, in a schema the processor's own migrations made: this tests the read side."""

import itertools
import re
import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from psycopg.types.json import Jsonb

from gateway.api.app import create_app
from processor.webhooks.deliveries import Outbox
from settlement.events import instant
from tests.integration.settlement import Setup
from tests.integration.test_intake import assert_problem
from tests.partners import Registered, write_registry

URL = "/api/v1/webhooks/deliveries"
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # as the status API writes them
OCCURRED = datetime(2026, 11, 27, 16, 0, 0, 412_000, tzinfo=UTC)
_numbers = itertools.count(1)


class Deliveries:
    """The test's schema, partners and gateway."""

    def __init__(self, setup: Setup, registry: Registered, client: AsyncTestClient) -> None:
        self.setup = setup
        self.registry = registry
        self.client = client
        self.acme = registry.ids["acme"]
        self.globex = registry.ids["globex"]

    def write(self, partner: str, event_type: str = "transaction.settled", state: str = "delivered", tries: int = 1):
        """An event of `partner` with `tries` attempts, the last of which ended as `state` says; its id."""
        n = next(_numbers)
        event_id = f"evt_{partner}_{n:04d}"
        payload = {"type": event_type, "timestamp": "2026-11-27T16:00:00.412Z", "data": {"n": n, "partner": partner}}
        outcome = {"delivered": "delivered", "failed": "status", "pending": "timeout"}[state]
        self.setup.sql(
            "INSERT INTO webhook_events (event_id, partner, event_type, subject, occurred_at, payload, state,"
            " attempts, next_attempt_at, delivered_at, last_outcome)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING sequence",
            event_id,
            partner,
            event_type,
            f"transactions/txn-{n}",
            OCCURRED + timedelta(seconds=n),
            Jsonb(payload),
            state,
            tries,
            OCCURRED + timedelta(hours=1, milliseconds=n),
            OCCURRED + timedelta(minutes=n) if state == "delivered" else None,
            f"{outcome}: the last attempt's detail" if tries else None,
        )
        for attempt in range(1, tries + 1):
            final = attempt == tries
            self.setup.sql(
                "INSERT INTO webhook_attempts (event_id, attempt, started_at, duration_ms, outcome, status_code,"
                " detail) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING attempt",
                event_id,
                attempt,
                OCCURRED + timedelta(seconds=attempt, microseconds=123_456),
                40 + attempt,
                outcome if final else "status",
                200 if final and state == "delivered" else 503,
                f"HTTP {200 if final and state == 'delivered' else 503} ({attempt})",
            )
        return event_id

    def row(self, event_id: str) -> tuple:
        (found,) = self.setup.sql(
            "SELECT state, attempts, schedule_from, next_attempt_at, clock_timestamp() FROM webhook_events"
            " WHERE event_id = %s",
            event_id,
        )
        return found

    async def get(self, role: str = "acme", **query):
        return await self.client.get(URL, params=query, headers=self.registry.bearer(role))

    async def resend(self, event_id: str, role: str = "acme"):
        return await self.client.post(f"{URL}/{event_id}/resend", headers=self.registry.bearer(role))

    async def every_page(self, **query) -> list[list[str]]:
        """The event ids of each page, following next_cursor to the end."""
        pages, cursor = [], None
        while True:
            response = await self.get(**query, **({"cursor": cursor} if cursor else {}))
            assert response.status_code == 200, response.text
            body = response.json()
            pages.append([item["event_id"] for item in body["deliveries"]])
            cursor = body["next_cursor"]
            if cursor is None:
                return pages


@pytest.fixture
async def deliveries(setup, tmp_path):
    setup.store().close()  # the processor's migrations, 0006 with them
    registry = write_registry(tmp_path)
    settings = msgspec.structs.replace(setup.gateway, partners_file=str(registry.path), partners_reload_seconds=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield Deliveries(setup, registry, client)


async def test_pages_newest_first_hold_each_of_the_partners_deliveries_once(deliveries):
    written = [deliveries.write(deliveries.acme, state=state) for state in ["delivered", "failed", "pending"] * 3]
    deliveries.write(deliveries.globex)
    first = await deliveries.get(limit=4)
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    assert [item["event_id"] for item in first.json()["deliveries"]] == written[::-1][:4]
    newer = deliveries.write(deliveries.acme)  # written while the partner pages: it is on no later page
    rest = []
    while cursor is not None:
        page = (await deliveries.get(limit=4, cursor=cursor)).json()
        rest.append([item["event_id"] for item in page["deliveries"]])
        cursor = page["next_cursor"]
    assert rest == [written[::-1][4:8], written[::-1][8:]]
    assert await deliveries.every_page(limit=4) == [[newer, *written[::-1][:3]], written[::-1][3:7], written[::-1][7:]]
    assert await deliveries.every_page(limit=10) == [[newer, *written[::-1]]]  # exactly a page: no empty one after
    assert await deliveries.every_page() == [[newer, *written[::-1]]]


async def test_each_delivery_says_its_state_its_attempts_and_the_body_delivered(deliveries):
    failed = deliveries.write(deliveries.acme, "batch.closed", state="failed", tries=3)
    pending = deliveries.write(deliveries.acme, "transaction.moved", state="pending", tries=0)
    delivered = deliveries.write(deliveries.acme, state="delivered", tries=2)
    page = (await deliveries.get()).json()["deliveries"]
    assert [item["event_id"] for item in page] == [delivered, pending, failed]
    done, waiting, given_up = page
    assert done["state"] == "delivered" and done["next_attempt_at"] is None
    assert INSTANT.fullmatch(done["delivered_at"]) and done["last_outcome"].startswith("delivered: ")
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in done["attempt_log"]] == [
        (1, "status", 503),
        (2, "delivered", 200),
    ]
    assert done["attempt_log"][0] == {
        "attempt": 1,
        "started_at": "2026-11-27T16:00:01.535Z",  # 412 ms + 1.123456 s, in the status API's milliseconds
        "duration_ms": 41,
        "outcome": "status",
        "status_code": 503,
        "detail": "HTTP 503 (1)",
    }
    assert waiting["state"] == "pending" and waiting["attempts"] == 0 and waiting["attempt_log"] == []
    assert INSTANT.fullmatch(waiting["next_attempt_at"]) and waiting["delivered_at"] is None
    assert waiting["last_outcome"] is None and waiting["event_type"] == "transaction.moved"
    assert given_up["state"] == "failed" and given_up["attempts"] == 3 and len(given_up["attempt_log"]) == 3
    assert given_up["next_attempt_at"] is None and given_up["last_outcome"].startswith("status: ")
    assert given_up["payload"]["type"] == "batch.closed" and given_up["payload"]["data"]["partner"] == deliveries.acme
    assert given_up["subject"].startswith("transactions/") and INSTANT.fullmatch(given_up["occurred_at"])


async def test_filters_by_state_and_event_type_and_refuses_what_is_not_one(deliveries):
    settled = deliveries.write(deliveries.acme, "transaction.settled", state="failed")
    closed = deliveries.write(deliveries.acme, "batch.closed", state="failed")
    deliveries.write(deliveries.acme, "batch.closed", state="delivered")
    deliveries.write(deliveries.globex, "batch.closed", state="failed")
    assert await deliveries.every_page(state="failed", limit=1) == [[closed], [settled]]
    failed_closed = await deliveries.every_page(state="failed", event_type="batch.closed")
    assert failed_closed == [[closed]]
    assert await deliveries.every_page(event_type="transaction.conflict") == [[]]
    for query in (
        {"state": "lost"},
        {"event_type": "transaction.refunded"},
        {"limit": 0},
        {"limit": 201},
        {"limit": "many"},
    ):
        assert_problem(await deliveries.get(**query), 400, "invalid-parameter")
    for cursor in ("not-a-cursor", "MTIz", "dy0x"):  # "123", "w-1": not cursors this API gave
        assert_problem(await deliveries.get(cursor=cursor), 422, "validation-failed")


async def test_another_partner_s_deliveries_are_not_listed_and_not_resent(deliveries):
    theirs = deliveries.write(deliveries.globex, state="failed")
    before = deliveries.row(theirs)
    assert await deliveries.every_page() == [[]]
    assert_problem(await deliveries.resend(theirs), 404, "not-found")
    assert deliveries.row(theirs)[:4] == before[:4]
    assert await deliveries.every_page(role="narrow") == [[]]  # a partner with no webhook events at all
    assert (await deliveries.get(role="globex")).json()["deliveries"][0]["event_id"] == theirs
    assert_problem(await deliveries.resend("evt_nothing_like_it"), 404, "not-found")
    anonymous = await deliveries.client.post(f"{URL}/{theirs}/resend")
    assert_problem(anonymous, 401, "unauthorized")
    assert_problem(await deliveries.client.get(URL), 401, "unauthorized")


async def test_a_resend_makes_a_failed_or_delivered_delivery_due_now_with_the_schedule_begun_again(deliveries):
    failed = deliveries.write(deliveries.acme, state="failed", tries=3)
    delivered = deliveries.write(deliveries.acme, state="delivered", tries=1)
    for event_id, attempts in ((failed, 3), (delivered, 1)):
        response = await deliveries.resend(event_id)
        assert response.status_code == 202, response.text
        item = response.json()
        assert item["event_id"] == event_id and item["state"] == "pending" and item["attempts"] == attempts
        assert len(item["attempt_log"]) == attempts  # the attempts so far stay in the log
        state, counted, schedule_from, due, now = deliveries.row(event_id)
        assert (state, counted, schedule_from) == ("pending", attempts, attempts)
        assert now - timedelta(seconds=5) < due <= now
        assert item["next_attempt_at"] == instant(due.timestamp())
    listed = {item["event_id"]: item["state"] for item in (await deliveries.get(state="pending")).json()["deliveries"]}
    assert listed == {failed: "pending", delivered: "pending"}


async def test_the_deliverer_takes_a_resent_delivery_as_the_first_try_of_a_new_schedule(deliveries):
    failed = deliveries.write(deliveries.acme, state="failed", tries=4)
    assert (await deliveries.resend(failed)).status_code == 202
    outbox = Outbox(deliveries.setup.database, deliveries.setup.settings.database_schema, (5, 300, 1800))
    await outbox.connect()
    try:
        (claimed,) = await outbox.claim({deliveries.acme: 10}, lease=30)
    finally:
        await outbox.close()
    assert (claimed.event_id, claimed.attempt, claimed.in_schedule) == (failed, 5, 1)


async def test_deliveries_that_ended_before_the_retention_are_forgotten_with_their_attempts(deliveries):
    acme = deliveries.acme
    old = [deliveries.write(acme, state=state, tries=2) for state in ("delivered", "failed", "pending")]
    recent = deliveries.write(acme, state="delivered")
    deliveries.setup.sql(
        "UPDATE webhook_events SET recorded_at = recorded_at - interval '31 days' WHERE event_id = ANY(%s)"
        " RETURNING event_id",
        old,
    )
    outbox = Outbox(deliveries.setup.database, deliveries.setup.settings.database_schema, (5,))
    await outbox.connect()
    try:
        assert await outbox.prune(days=30, limit=1) == 1  # a bounded number at a time
        assert await outbox.prune(days=30) == 1
        assert await outbox.prune(days=30) == 0
    finally:
        await outbox.close()
    left = deliveries.setup.sql("SELECT event_id FROM webhook_events WHERE partner = %s ORDER BY 1", acme)
    assert left == sorted([(old[2],), (recent,)])  # a pending one stays, however old: it is still owed
    assert deliveries.setup.sql("SELECT count(*) FROM webhook_attempts WHERE event_id = ANY(%s)", old[:2]) == [(0,)]


async def test_a_resend_of_a_pending_delivery_is_409_saying_when_its_next_attempt_is(deliveries):
    pending = deliveries.write(deliveries.acme, state="pending", tries=1)
    before = deliveries.row(pending)
    problem = assert_problem(await deliveries.resend(pending), 409, "delivery-pending")
    due = instant(before[3].timestamp())
    assert problem["detail"] == f"delivery {pending} is pending; its next attempt is due at {due}", problem
    assert deliveries.row(pending)[:4] == before[:4]  # untouched
    failed = deliveries.write(deliveries.acme, state="failed")
    assert (await deliveries.resend(failed)).status_code == 202
    assert_problem(await deliveries.resend(failed), 409, "delivery-pending")  # a second resend: pending now


async def test_an_unreachable_database_makes_both_operations_503_with_retry_after(stack):
    settings = msgspec.structs.replace(
        stack, database_url="postgresql://settlement@127.0.0.1:1/settlement", ready_timeout_ms=300
    )
    async with AsyncTestClient(create_app(settings)) as client:
        for ask in range(2):  # the first and later asks alike
            started = time.monotonic()
            for response in (await client.get(URL), await client.post(f"{URL}/evt_any/resend")):
                assert_problem(response, 503, "dependency-unavailable")
                assert response.headers["retry-after"] == str(stack.retry_after_seconds)
            if ask:  # known down: answered at once, not after the pool's full wait
                assert time.monotonic() - started < 0.8
