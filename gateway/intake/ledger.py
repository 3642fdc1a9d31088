"""The ledger: the settlement state the processor keeps in PostgreSQL, as the gateway reads it.

The status API asks it what became of a payment. The intake asks it only when Redis has forgotten: a
retry whose idempotency key expired (or another key for the same payment) is answered from the ledger's
record of the transaction, with the answer its 202 carried. PostgreSQL unreachable is a
DependencyUnavailable (503 with Retry-After); a new transaction never waits for it.
"""

import asyncio
import logging
from typing import Any, NamedTuple

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.errors import DependencyUnavailable
from gateway.intake.schemas import compact_answer
from gateway.settings import Settings

log = logging.getLogger("gateway.intake.ledger")

# what the intake needs of an accepted transaction: its fingerprint, and what its 202 said
_ACCEPTED = (
    "SELECT transaction_id, fingerprint, coalesce(routed_batch_id, batch_id), topic, partition, kafka_offset,"
    " (extract(epoch FROM accepted_at) * 1000)::bigint FROM transactions"
    " WHERE partner = %s AND transaction_id = ANY(%s)"
)


UNREACHABLE_WAIT = 0.1  # seconds a query waits for a connection while the database is known to be down


class Known(NamedTuple):
    """A transaction the ledger holds: the fingerprint of its payload and its compact answer."""

    fingerprint: str
    answer: bytes


class Ledger:
    """A maintained pool of PostgreSQL connections per worker (psycopg_pool) for the status queries and
    the intake's look-ups: filled in the background from start-up, so neither waits for a connection to
    be made, and a broken one is replaced by the pool. Every statement is prepared on a connection's
    first use of it (prepare_threshold 0; psycopg's default waits for the fifth): the status GET is the
    same query a thousand times a second, and unprepared it cost PostgreSQL twice the CPU (120 µs a
    query against 55, measured one at a time). The pool's own bookkeeping costs some 20 µs of the
    worker's CPU a query over a bare queue of connections: the price of a maintained one."""

    def __init__(self, settings: Settings, connections: int = 4) -> None:
        self._schema = settings.database_schema
        self._timeout = settings.ready_timeout_ms / 1000
        self._pool = AsyncConnectionPool(
            settings.database_url,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "connect_timeout": max(int(self._timeout), 1),
                "application_name": "gateway-ledger",  # its connections, told apart in pg_stat_activity
                # the schema is a checked lower-case identifier (Settings); set at login, no round trip
                "options": f"-c search_path={self._schema}",
            },
            min_size=connections,
            max_size=connections,
            open=False,
            timeout=self._timeout * 2,
            name="ledger",
        )
        self._told_no_schema = False
        # after a failure, ask the pool for a connection only briefly until one answers again: a
        # database known to be down answers 503 at once, not after the full wait each time
        self._unreachable = False

    async def open(self) -> None:
        """Start filling the pool; returns at once (the intake never waits for PostgreSQL)."""
        await self._pool.open(wait=False)

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

    async def close(self) -> None:
        await self._pool.close()

    async def known(self, partner: str, transaction_ids: list[str]) -> dict[str, Known]:
        """The transactions of `partner` among `transaction_ids` the ledger holds, by id."""
        rows = await self.rows(_ACCEPTED, partner, transaction_ids)
        return {
            transaction_id: Known(fingerprint, compact_answer(batch, topic, partition, offset, accepted_ms))
            for transaction_id, fingerprint, batch, topic, partition, offset, accepted_ms in rows
        }
