"""The deliverer's side of the outbox (migration 0006): claim what is due, record how each attempt went.

A claim takes up to a given number of due events per partner with FOR UPDATE SKIP LOCKED (several
deliverers never take the same one), counts the attempt and leases the event: its next attempt moves to
the end of the longest an attempt can take. If the deliverer dies mid-attempt (SIGKILL), the lease runs
out and the event is due again, with the same id; nothing is lost. An event is claimed only once no
earlier event of its subject (the same transaction, or batch) is pending, so a partner hears of a
transaction's changes in the order they happened, even across retries.
"""

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import psycopg
from psycopg import sql

from processor.webhooks.outbox import channel
from processor.webhooks.sending import Attempt

_CLAIM = """
WITH quota AS (SELECT * FROM unnest(%(partners)s::text[], %(free)s::int[]) AS q(partner, free)),
picked AS (
    SELECT e.event_id FROM quota q CROSS JOIN LATERAL (
        SELECT event_id FROM webhook_events e
        WHERE e.partner = q.partner AND e.state = 'pending' AND e.next_attempt_at <= statement_timestamp()
          AND NOT EXISTS (SELECT 1 FROM webhook_events b WHERE b.partner = e.partner AND b.subject = e.subject
                          AND b.state = 'pending' AND b.sequence < e.sequence)
        ORDER BY e.next_attempt_at, e.sequence LIMIT q.free
        FOR UPDATE SKIP LOCKED
    ) e
)
UPDATE webhook_events w
SET attempts = w.attempts + 1, next_attempt_at = statement_timestamp() + %(lease)s * interval '1 second'
WHERE w.event_id = ANY(ARRAY(SELECT event_id FROM picked))  -- by the primary key: never a scan of the outbox
RETURNING w.event_id, w.partner, w.event_type, w.attempts, w.attempts - w.schedule_from, w.recorded_at,
    w.payload::text
"""

# The attempts that ended and what follows each (delivered, a retry at a time, or failed), in one
# statement: only an event still pending moves (another deliverer whose claim outlived ours may have
# recorded it). Returns each event moved, and the delay of a delivered one (seconds since the change).
_RECORD = """
WITH attempt AS (
    INSERT INTO webhook_attempts (event_id, attempt, started_at, duration_ms, outcome, status_code, detail)
    SELECT * FROM unnest(%(ids)s::text[], %(attempts)s::int[], %(started)s::timestamptz[], %(ms)s::int[],
                         %(outcomes)s::text[], %(codes)s::int[], %(details)s::text[])
    ON CONFLICT DO NOTHING
)
UPDATE webhook_events w
SET state = u.state, next_attempt_at = coalesce(u.next_at, w.next_attempt_at),
    delivered_at = coalesce(u.delivered_at, w.delivered_at),  -- a resent one keeps its earlier delivery's
    last_outcome = u.last_outcome
FROM unnest(%(ids)s::text[], %(states)s::text[], %(next)s::timestamptz[], %(delivered)s::timestamptz[],
            %(last)s::text[]) AS u(event_id, state, next_at, delivered_at, last_outcome)
WHERE w.event_id = u.event_id AND w.state = 'pending'
RETURNING w.event_id, extract(epoch FROM w.delivered_at - w.recorded_at)
"""
_BACKLOG = "SELECT partner, count(*) FROM webhook_events WHERE state = 'pending' GROUP BY 1"
# Deliveries that ended (delivered or failed) before the retention, with their attempts, a bounded number
# at a time (short transactions: the claims and the partners' API never wait long); pending ones stay.
_PRUNE = """
WITH old AS (
    SELECT event_id FROM webhook_events
    WHERE state <> 'pending' AND recorded_at < statement_timestamp() - %(days)s * interval '1 day'
    LIMIT %(limit)s
), attempts AS (
    DELETE FROM webhook_attempts WHERE event_id IN (SELECT event_id FROM old)
)
DELETE FROM webhook_events WHERE event_id IN (SELECT event_id FROM old)
"""


class Claimed(NamedTuple):
    """An event claimed for one attempt."""

    event_id: str
    partner: str
    event_type: str
    attempt: int  # this attempt's number among all of the event's attempts
    in_schedule: int  # its number since the retry schedule began (1: the first try, or the first after a resend)
    recorded_at: datetime  # when the state change was written: the delivery delay's start
    body: str


class Recorded(NamedTuple):
    """What recording an attempt did: delivered (with the delay since the change, seconds), retry, failed,
    or nothing (`recorded before`: the event was no longer pending)."""

    verdict: str
    delay: float | None = None


class Outbox:
    """The deliverer's connection to the outbox, in `schema`."""

    def __init__(self, url: str, schema: str, delays: Sequence[float]) -> None:
        self._url, self._schema, self._delays = url, schema, tuple(delays)
        self._conn: psycopg.AsyncConnection | None = None

    async def connect(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=5)
        await self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> psycopg.AsyncConnection:
        if self._conn is None:
            raise psycopg.OperationalError("not connected")
        return self._conn

    async def claim(self, free: Mapping[str, int], lease: float) -> list[Claimed]:
        """Up to `free[partner]` due events of each partner, leased for `lease` seconds."""
        if not free:
            return []
        partners = sorted(free)
        cursor = await self.conn.execute(
            _CLAIM, {"partners": partners, "free": [free[p] for p in partners], "lease": lease}
        )
        return sorted((Claimed(*row) for row in await cursor.fetchall()), key=lambda c: (c.partner, c.recorded_at))

    def verdict(self, claimed: Claimed, attempt: Attempt) -> tuple[str, datetime | None]:
        """After a failed attempt: retry at a time (the schedule's wait, jittered within 20%), or fail."""
        if claimed.in_schedule > len(self._delays):
            return "failed", None
        wait = self._delays[claimed.in_schedule - 1] * random.uniform(0.8, 1.2)
        return "retry", attempt.ended_at + timedelta(seconds=wait)

    async def record(self, results: Sequence[tuple[Claimed, Attempt]]) -> list[Recorded]:
        """Record the attempts and what follows each, in one statement; each one's verdict (in order)."""
        verdicts = [self._follows(claimed, attempt) for claimed, attempt in results]
        attempts = [attempt for _, attempt in results]
        ids = [claimed.event_id for claimed, _ in results]
        cursor = await self.conn.execute(
            _RECORD,
            {
                "ids": ids,
                "attempts": [claimed.attempt for claimed, _ in results],
                "started": [a.started_at for a in attempts],
                "ms": [a.duration_ms for a in attempts],
                "outcomes": [a.outcome for a in attempts],
                "codes": [a.status_code for a in attempts],
                "details": [a.detail for a in attempts],
                "states": [v[0] for v in verdicts],
                "next": [v[1] for v in verdicts],
                "delivered": [a.ended_at if a.delivered else None for a in attempts],
                "last": [f"{a.outcome}: {a.detail}"[:500] for a in attempts],
            },
        )
        moved = {event_id: delay for event_id, delay in await cursor.fetchall()}
        recorded = []
        for event_id, (state, _) in zip(ids, verdicts, strict=True):
            if event_id not in moved:
                recorded.append(Recorded("recorded before"))
            elif state == "delivered":
                recorded.append(Recorded("delivered", float(moved[event_id])))
            else:
                recorded.append(Recorded("retry" if state == "pending" else state))
        return recorded

    def _follows(self, claimed: Claimed, attempt: Attempt) -> tuple[str, datetime | None]:
        """The event's state after `attempt`, and when it is due again if it stays pending."""
        if attempt.delivered:
            return "delivered", None
        verdict, at = self.verdict(claimed, attempt)
        return ("failed", None) if verdict == "failed" else ("pending", at)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever the processor announces events (outbox.announce), until the connection
        fails or the task is cancelled; the deliverer polls meanwhile, so nothing waits on this."""
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=5) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(channel(self._schema)))
            async for _ in conn.notifies():
                wake()

    async def prune(self, days: float, limit: int = 5000) -> int:
        """Forget deliveries that ended more than `days` ago (at most `limit` of them); how many."""
        cursor = await self.conn.execute(_PRUNE, {"days": days, "limit": limit})
        return cursor.rowcount

    async def backlog(self) -> dict[str, int]:
        """Pending events per partner."""
        cursor = await self.conn.execute(_BACKLOG)
        return {partner: int(count) for partner, count in await cursor.fetchall()}
