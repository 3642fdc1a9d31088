"""The deliverer's side of the outbox (migration 0006): claim what is due, record how each attempt went.

A claim takes up to a given number of due events per partner with FOR UPDATE SKIP LOCKED (several
deliverers never take the same one), counts the attempt and leases the event: its next attempt moves to
the end of the longest an attempt can take. If the deliverer dies mid-attempt (SIGKILL), the lease runs
out and the event is due again, with the same id; nothing is lost. An event is claimed only once no
earlier event of its subject (the same transaction, or batch) is pending, so a partner hears of a
transaction's changes in the order they happened, even across retries.
"""

import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import psycopg
from psycopg import sql

from processor.webhooks.sending import Attempt

_CLAIM = """
WITH quota AS (SELECT * FROM unnest(%(partners)s::text[], %(free)s::int[]) AS q(partner, free)),
picked AS (
    SELECT e.sequence FROM quota q CROSS JOIN LATERAL (
        SELECT sequence FROM webhook_events e
        WHERE e.partner = q.partner AND e.state = 'pending' AND e.next_attempt_at <= clock_timestamp()
          AND NOT EXISTS (SELECT 1 FROM webhook_events b WHERE b.partner = e.partner AND b.subject = e.subject
                          AND b.state = 'pending' AND b.sequence < e.sequence)
        ORDER BY e.next_attempt_at, e.sequence LIMIT q.free
        FOR UPDATE SKIP LOCKED
    ) e
)
UPDATE webhook_events w
SET attempts = w.attempts + 1, next_attempt_at = clock_timestamp() + %(lease)s * interval '1 second'
FROM picked WHERE w.sequence = picked.sequence
RETURNING w.event_id, w.partner, w.event_type, w.attempts, w.attempts - w.schedule_from, w.recorded_at,
    w.payload::text
"""

_ATTEMPT = (
    "INSERT INTO webhook_attempts (event_id, attempt, started_at, duration_ms, outcome, status_code, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
_DELIVERED = (
    "UPDATE webhook_events SET state = 'delivered', delivered_at = %s, last_outcome = %s"
    " WHERE event_id = %s AND state = 'pending' RETURNING extract(epoch FROM %s - recorded_at)"
)
_RETRY = "UPDATE webhook_events SET next_attempt_at = %s, last_outcome = %s WHERE event_id = %s AND state = 'pending'"
_FAILED = "UPDATE webhook_events SET state = 'failed', last_outcome = %s WHERE event_id = %s AND state = 'pending'"
_BACKLOG = "SELECT partner, count(*) FROM webhook_events WHERE state = 'pending' GROUP BY 1"


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
    """What recording an attempt did: delivered (with the delay since the change, seconds), retry, failed."""

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
        return "retry", attempt.started_at + timedelta(milliseconds=attempt.duration_ms, seconds=wait)

    async def record(self, results: Sequence[tuple[Claimed, Attempt]]) -> list[Recorded]:
        """Record the attempts and what follows each, in one transaction."""
        recorded = []
        conn = self.conn
        async with conn.transaction(), conn.cursor() as cursor:
            for claimed, attempt in results:
                await cursor.execute(
                    _ATTEMPT,
                    (claimed.event_id, claimed.attempt, attempt.started_at, attempt.duration_ms,
                     attempt.outcome, attempt.status_code, attempt.detail),
                )  # fmt: skip
                recorded.append(await self._follow(cursor, claimed, attempt))
        return recorded

    async def _follow(self, cursor: psycopg.AsyncCursor, claimed: Claimed, attempt: Attempt) -> Recorded:
        outcome = f"{attempt.outcome}: {attempt.detail}"[:500]
        if attempt.delivered:
            ended = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
            await cursor.execute(_DELIVERED, (ended, outcome, claimed.event_id, ended))
            row = await cursor.fetchone()
            return Recorded("delivered", float(row[0]) if row else None)
        verdict, at = self.verdict(claimed, attempt)
        if verdict == "failed":
            await cursor.execute(_FAILED, (outcome, claimed.event_id))
        else:
            await cursor.execute(_RETRY, (at, outcome, claimed.event_id))
        return Recorded(verdict)

    async def backlog(self) -> dict[str, int]:
        """Pending events per partner."""
        cursor = await self.conn.execute(_BACKLOG)
        return {partner: int(count) for partner, count in await cursor.fetchall()}
