"""The read model: what the gateway asks of the ledger the processor writes, over a maintained pool.

The status API asks what became of a payment and of a batch; the intake asks only when Redis has
forgotten a transaction (its fingerprint and the answer its 202 carried); the webhook API lists a
partner's deliveries and asks for one to be sent again (the one write: see `resend`). Every query is
here, beside the migrations that make the tables it reads. PostgreSQL unreachable is
DependencyUnavailable (the gateway answers 503 with Retry-After); a schema the processor has not
created yet knows nothing.
"""

import asyncio
import logging
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
from psycopg_pool import AsyncConnectionPool

from settlement.errors import DependencyUnavailable

log = logging.getLogger("settlement.ledger")

UNREACHABLE_WAIT = 0.1  # seconds a query waits for a connection while the database is known to be down


class AcceptedRow(NamedTuple):
    """What the intake needs of a transaction the ledger holds: its fingerprint and its 202's facts."""

    transaction_id: str
    fingerprint: str
    batch_id: str  # the batch of its 202 (routed), where the late path moved it from
    topic: str
    partition: int
    offset: int
    accepted_ms: int


class TransactionRow(NamedTuple):
    status: str
    window: str
    value_date: date
    batch_id: str
    amount: Decimal
    currency: str
    topic: str
    partition: int
    offset: int
    accepted_at: datetime | None
    batched_at: datetime | None
    settled_at: datetime | None
    late: bool
    routed_batch_id: str | None
    routed_value_date: date | None


class BatchRow(NamedTuple):
    """A batch, with the partner's share of its frozen positions (null while open)."""

    batch_id: str
    window: str
    value_date: date
    currency: str
    status: str
    closes_at: datetime
    settles_at: datetime
    opened_at: datetime
    closed_at: datetime | None
    settled_at: datetime | None
    net_positions: dict[str, dict[str, str]] | None
    cross_currency_legs: list[dict[str, Any]] | None


class PartnerTotal(NamedTuple):
    currency: str
    transactions: int
    amount: str  # exact decimal


class DeliveryRow(NamedTuple):
    """A webhook event of the partner's and how its delivery stands (migration 0006)."""

    sequence: int  # the order the events were written in: the deliveries' cursor
    event_id: str
    event_type: str
    subject: str
    state: str
    attempts: int
    occurred_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_outcome: str | None
    payload: dict[str, Any]


class AttemptRow(NamedTuple):
    """One attempt to deliver an event, and how it ended."""

    event_id: str
    attempt: int
    started_at: datetime
    duration_ms: int
    outcome: str
    status_code: int | None
    detail: str | None


class Resent(NamedTuple):
    """What a resend found: the delivery (after the resend when `resent`, as it stands when it was pending)."""

    resent: bool
    delivery: DeliveryRow


_ACCEPTED = (
    "SELECT transaction_id, fingerprint, coalesce(routed_batch_id, batch_id), topic, partition, kafka_offset,"
    " (extract(epoch FROM accepted_at) * 1000)::bigint FROM transactions"
    " WHERE partner = %s AND transaction_id = ANY(%s)"
)
_TRANSACTION = (
    "SELECT status, settlement_window, value_date, batch_id, amount, source_currency, topic, partition,"
    " kafka_offset, accepted_at, batched_at, settled_at, late, routed_batch_id, routed_value_date FROM transactions"
    " WHERE partner = %s AND transaction_id = %s"
)
_BATCH_COLUMNS = (
    "SELECT batch_id, settlement_window, value_date, currency, status, closes_at, settles_at, opened_at,"
    " closed_at, settled_at, net_positions -> %s, cross_currency_legs -> %s FROM batches b"
)
_BATCH = (
    _BATCH_COLUMNS + " WHERE batch_id = %s"
    " AND (EXISTS (SELECT 1 FROM transactions t WHERE t.partner = %s AND t.batch_id = b.batch_id)"
    " OR EXISTS (SELECT 1 FROM transactions t WHERE t.partner = %s AND t.routed_batch_id = b.batch_id AND t.late))"
)
_BATCHES = (
    _BATCH_COLUMNS + " WHERE EXISTS (SELECT 1 FROM transactions t WHERE t.partner = %s AND t.batch_id = b.batch_id)"
    " AND (%s::text IS NULL OR settlement_window = %s) AND (%s::date IS NULL OR value_date = %s)"
    " AND (%s::text IS NULL OR status = %s) AND (value_date, batch_id) > (%s, %s)"
    " ORDER BY value_date, batch_id LIMIT %s"
)
_PARTNER_TOTALS = (
    "SELECT source_currency, count(*), sum(amount)::text FROM transactions"
    " WHERE partner = %s AND batch_id = %s GROUP BY 1 ORDER BY 1"
)
_LATE = "SELECT transaction_id FROM transactions WHERE partner = %s AND routed_batch_id = %s AND late ORDER BY 1"
_DELIVERY_COLUMNS = (
    "sequence, event_id, event_type, subject, state, attempts, occurred_at, next_attempt_at, delivered_at,"
    " last_outcome, payload"
)
_DELIVERIES = (
    f"SELECT {_DELIVERY_COLUMNS} FROM webhook_events WHERE partner = %s AND sequence < %s"
    " AND (%s::text IS NULL OR state = %s) AND (%s::text IS NULL OR event_type = %s)"
    " ORDER BY sequence DESC LIMIT %s"
)
_ATTEMPTS = (
    "SELECT a.event_id, attempt, started_at, duration_ms, outcome, status_code, detail FROM webhook_attempts a"
    " JOIN webhook_events e ON e.event_id = a.event_id AND e.partner = %s"
    " WHERE a.event_id = ANY(%s) ORDER BY a.event_id, attempt"
)
# The gateway's one write to the ledger: a partner's delivered or failed event made due again, its retry
# schedule starting afresh (schedule_from); the deliverer owns every other column of the delivery. In
# one statement, so the answer is of one snapshot: resent, or the pending event as it stands (a 409), or
# nothing (not the partner's, or no such event: a 404).
_RESEND = f"""
WITH resent AS (
    UPDATE webhook_events SET state = 'pending', next_attempt_at = clock_timestamp(), schedule_from = attempts
    WHERE partner = %s AND event_id = %s AND state <> 'pending'
    RETURNING {_DELIVERY_COLUMNS}
)
SELECT true, {_DELIVERY_COLUMNS} FROM resent
UNION ALL
SELECT false, {_DELIVERY_COLUMNS} FROM webhook_events
WHERE partner = %s AND event_id = %s AND NOT EXISTS (SELECT 1 FROM resent)
"""


class LedgerReader:
    """A maintained pool of PostgreSQL connections per worker (psycopg_pool): filled in the background
    from start-up, so no query waits for a connection to be made, and a broken one is replaced by the
    pool. Every statement is prepared on a connection's first use of it (prepare_threshold 0; psycopg's
    default waits for the fifth): the status GET is the same query a thousand times a second, and
    unprepared it cost PostgreSQL twice the CPU (120 µs a query against 55, measured one at a time). The
    pool's own bookkeeping costs some 20 µs of the worker's CPU a query over a bare queue of
    connections: the price of a maintained one."""

    def __init__(
        self, database_url: str, schema: str, timeout: float, connections: int = 4, name: str = "gateway-ledger"
    ) -> None:
        self._schema = schema
        self._timeout = timeout
        self._pool = AsyncConnectionPool(
            database_url,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "connect_timeout": max(int(timeout), 1),
                "application_name": name,  # its connections, told apart in pg_stat_activity
                # the schema is a checked lower-case identifier (SharedSettings); set at login, no round trip
                "options": f"-c search_path={schema}",
            },
            min_size=connections,
            max_size=connections,
            open=False,
            timeout=timeout * 2,
            name="ledger",
        )
        self._told_no_schema = False
        # after a failure, ask the pool for a connection only briefly until one answers again: a
        # database known to be down answers 503 at once, not after the full wait each time
        self._unreachable = False

    async def open(self) -> None:
        """Start filling the pool; returns at once (the intake never waits for PostgreSQL)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def rows(self, query: str, *args: Any) -> list[tuple]:
        """Run one query; DependencyUnavailable when PostgreSQL cannot answer (a pool timeout is an
        OperationalError too)."""
        wait = UNREACHABLE_WAIT if self._unreachable else self._timeout * 2
        try:
            async with asyncio.timeout(self._timeout * 2), self._pool.connection(timeout=wait) as conn:
                cursor = await conn.execute(query, args)
                rows = await cursor.fetchall()
        except psycopg.errors.UndefinedTable:
            # the processor has not created its schema yet: it knows nothing so far (said once)
            if not self._told_no_schema:
                self._told_no_schema = True
                log.warning("the settlement schema %s does not exist yet (is the processor running?)", self._schema)
            return []
        except (psycopg.OperationalError, TimeoutError) as exc:
            # a broken connection goes back to the pool, which closes it and makes another
            self._unreachable = True
            raise DependencyUnavailable("database", str(exc).strip() or type(exc).__name__) from None
        self._unreachable = False
        return rows

    async def accepted(self, partner: str, transaction_ids: list[str]) -> list[AcceptedRow]:
        """The transactions of `partner` among `transaction_ids` the ledger holds."""
        return [AcceptedRow(*row) for row in await self.rows(_ACCEPTED, partner, transaction_ids)]

    async def transaction(self, partner: str, transaction_id: str) -> TransactionRow | None:
        rows = await self.rows(_TRANSACTION, partner, transaction_id)
        return TransactionRow(*rows[0]) if rows else None

    async def batch(self, partner: str, batch_id: str) -> BatchRow | None:
        """A batch `partner` has transactions in (or late ones routed to it)."""
        rows = await self.rows(_BATCH, partner, partner, batch_id, partner, partner)
        return BatchRow(*rows[0]) if rows else None

    async def batches(
        self,
        partner: str,
        window: str | None,
        value_date: date | None,
        status: str | None,
        after: tuple[date, str],
        limit: int,
    ) -> list[BatchRow]:
        """Up to `limit` of the partner's batches after `after` (value date, batch id), in that order."""
        rows = await self.rows(
            _BATCHES, partner, partner, partner, window, window, value_date, value_date, status, status, *after, limit
        )
        return [BatchRow(*row) for row in rows]

    async def partner_totals(self, partner: str, batch_id: str) -> list[PartnerTotal]:
        """The partner's count and exact sum per source currency in a batch."""
        return [PartnerTotal(*row) for row in await self.rows(_PARTNER_TOTALS, partner, batch_id)]

    async def late(self, partner: str, batch_id: str) -> list[str]:
        """The partner's transactions routed to this batch but read after it closed."""
        return [row[0] for row in await self.rows(_LATE, partner, batch_id)]

    async def deliveries(
        self, partner: str, state: str | None, event_type: str | None, before: int, limit: int
    ) -> list[DeliveryRow]:
        """Up to `limit` of the partner's webhook events written before `before` (a sequence), newest first."""
        rows = await self.rows(_DELIVERIES, partner, before, state, state, event_type, event_type, limit)
        return [DeliveryRow(*row) for row in rows]

    async def attempts(self, partner: str, event_ids: list[str]) -> list[AttemptRow]:
        """Every attempt of these events of the partner's, by event then in the order they were made."""
        return [AttemptRow(*row) for row in await self.rows(_ATTEMPTS, partner, event_ids)]

    async def resend(self, partner: str, event_id: str) -> Resent | None:
        """Make the partner's delivered or failed event due now, its retry schedule begun again; None
        when the partner has no such event. A pending one is left as it is (`resent` false)."""
        rows = await self.rows(_RESEND, partner, event_id, partner, event_id)
        return Resent(rows[0][0], DeliveryRow(*rows[0][1:])) if rows else None
