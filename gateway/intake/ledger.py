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
from psycopg import sql

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


class Known(NamedTuple):
    """A transaction the ledger holds: the fingerprint of its payload and its compact answer."""

    fingerprint: str
    answer: bytes


class Ledger:
    """A few PostgreSQL connections per worker for the status queries and the intake's look-ups (a
    query waits only for a free one), each made when first needed and made again after it broke."""

    def __init__(self, settings: Settings, connections: int = 4) -> None:
        self._url = settings.database_url
        self._schema = settings.database_schema
        self._timeout = settings.ready_timeout_ms / 1000
        self._free: asyncio.Queue[psycopg.AsyncConnection | None] = asyncio.Queue()
        for _ in range(connections):
            self._free.put_nowait(None)  # a connection not made yet
        self._all: set[psycopg.AsyncConnection] = set()
        self._told_no_schema = False

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=max(int(self._timeout), 1)
        )
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
        self._all.add(conn)
        return conn

    async def rows(self, query: str, *args: Any) -> list[tuple]:
        """Run one query; DependencyUnavailable when PostgreSQL cannot answer."""
        conn, taken = None, False
        try:
            async with asyncio.timeout(self._timeout * 2):
                conn = await self._free.get()
                taken = True
                if conn is None or conn.closed:
                    conn = await self._connect()
                cursor = await conn.execute(query, args)
                return await cursor.fetchall()
        except psycopg.errors.UndefinedTable:
            # the processor has not created its schema yet: it knows nothing so far (said once)
            if not self._told_no_schema:
                self._told_no_schema = True
                log.warning("the settlement schema %s does not exist yet (is the processor running?)", self._schema)
            return []
        except (psycopg.OperationalError, TimeoutError) as exc:
            if conn is not None:
                self._all.discard(conn)
                await conn.close()
                conn = None
            raise DependencyUnavailable("database", str(exc).strip() or type(exc).__name__) from None
        finally:
            if taken:  # its slot goes back, with the connection or empty (made again when next needed)
                self._free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()

    async def known(self, partner: str, transaction_ids: list[str]) -> dict[str, Known]:
        """The transactions of `partner` among `transaction_ids` the ledger holds, by id."""
        rows = await self.rows(_ACCEPTED, partner, transaction_ids)
        return {
            transaction_id: Known(fingerprint, compact_answer(batch, topic, partition, offset, accepted_ms))
            for transaction_id, fingerprint, batch, topic, partition, offset, accepted_ms in rows
        }
