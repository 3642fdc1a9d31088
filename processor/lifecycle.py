"""The batch lifecycle in PostgreSQL: a step closes the batches the watermark has passed the close of
(freezing count, totals and net positions), settles the rtgs transactions due and the batches whose
settlement time has come, queues a BatchClosed or BatchSettled event for each (the outbox the processor
publishes from) and is recorded when it did anything, so that a replay retakes it at the same place.

Functions on the store's connection, called inside the transaction SettlementStore.advance opens.
"""

import json
from collections.abc import Callable
from datetime import datetime

import psycopg

from processor.records import Partition
from processor.webhooks import outbox
from settlement.events import BatchEventType, batch_event

# A batch's frozen figures (every amount an exact decimal string of the currency it is in):
# totals per source currency; net positions per partner, currency and account (participant) of its
# same-currency transactions, which sum to exactly zero per partner and currency; and its cross-currency
# transactions apart, summed per leg in the source currency (the gateway has no FX rate to net them by).
_TOTALS = (
    "SELECT source_currency, count(*), sum(amount)::text FROM transactions WHERE batch_id = %s GROUP BY 1 ORDER BY 1"
)
_NET_POSITIONS = """
SELECT partner, currency, account, sum(delta)::text FROM (
    SELECT partner, source_currency AS currency, source_account AS account, -amount AS delta FROM transactions
    WHERE batch_id = %(batch)s AND source_currency = destination_currency
    UNION ALL
    SELECT partner, source_currency, destination_account, amount FROM transactions
    WHERE batch_id = %(batch)s AND source_currency = destination_currency
) moves GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
_CROSS_CURRENCY_LEGS = (
    "SELECT partner, source_account, source_currency, destination_account, destination_currency, count(*),"
    " sum(amount)::text FROM transactions WHERE batch_id = %s AND source_currency <> destination_currency"
    " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
)
# rtgs transactions settle one by one when due; t0 and t1 ones with their batch (each with its webhook)
_SETTLE_RTGS = outbox.settle("settlement_window = 'rtgs' AND settles_at <= %(now)s")
_SETTLE_MEMBERS = outbox.settle("batch_id = %(batch)s")
_LEG_FIELDS = ("source_account", "source_currency", "destination_account", "destination_currency", "count", "amount")
_SETTLED_FIELDS = ("transaction_count", "totals", "net_positions", "cross_currency_legs", "late_count")


def _count(cursor: psycopg.Cursor) -> int:
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def oldest_event_time(conn: psycopg.Connection, partitions: list[Partition]) -> datetime | None:
    """The watermark: the oldest event time of `partitions`; None while one of them has none."""
    if not partitions:
        return None
    count, oldest = conn.execute(
        "SELECT count(event_time), min(event_time) FROM consumed WHERE (topic, partition) IN "
        "(SELECT * FROM unnest(%s::text[], %s::int[]))",
        ([t for t, _ in partitions], [p for _, p in partitions]),
    ).fetchone() or (0, None)
    return oldest if count == len(set(partitions)) else None


def step(
    conn: psycopg.Connection, now: datetime, watermark: datetime | None, event_id: Callable[[], str]
) -> dict[str, int]:
    """One lifecycle step as of `now` with `watermark` (None: no batch closes); how many it closed,
    settled and rtgs transactions it settled."""
    (closed_through,) = conn.execute("SELECT closed_through FROM lifecycle FOR UPDATE").fetchone() or (None,)
    through = max(closed_through, watermark) if watermark is not None else closed_through
    # in this order: what closes now is frozen before any of its rtgs members settle
    closed = close_due(conn, through, now, event_id)
    rtgs_settled = _count(conn.execute(_SETTLE_RTGS, {"now": now}))
    settled = settle_due(conn, now, event_id)
    done = {"closed": closed, "settled": settled, "rtgs_settled": rtgs_settled}
    if any(done.values()):
        conn.execute(
            "INSERT INTO lifecycle_steps (taken_at, watermark, offsets, closed, settled, rtgs_settled)"
            " SELECT %s, %s, coalesce(jsonb_agg(jsonb_build_array(topic, partition, next_offset)), '[]'),"
            " %s, %s, %s FROM consumed",
            (now, through, done["closed"], done["settled"], done["rtgs_settled"]),
        )
    return done


def close_due(conn: psycopg.Connection, through: datetime | None, now: datetime, event_id: Callable[[], str]) -> int:
    """Close every open batch whose close is at or before `through`; how many."""
    due = conn.execute(
        "SELECT batch_id FROM batches WHERE status = 'open' AND closes_at <= %s ORDER BY closes_at, batch_id "
        "FOR UPDATE",
        (through,),
    ).fetchall()
    for (batch_id,) in due:
        queue(conn, batch_id, "BatchClosed", event_id(), now, freeze(conn, batch_id, now))
        outbox.batch_event(conn, "batch.closed", batch_id, now)
    if due:
        conn.execute("UPDATE lifecycle SET closed_through = %s", (through,))
    return len(due)


def settle_due(conn: psycopg.Connection, now: datetime, event_id: Callable[[], str]) -> int:
    """Settle every closed batch due by `now` (t0/t1: its settlement time; rtgs: once its members all
    settled) with its members; how many."""
    settling = conn.execute(
        """SELECT batch_id FROM batches b WHERE status = 'closed' AND (
               (settlement_window <> 'rtgs' AND settles_at <= %(now)s)
            OR (settlement_window = 'rtgs' AND NOT EXISTS (
                   SELECT 1 FROM transactions t WHERE t.batch_id = b.batch_id AND t.status = 'batched')))
           ORDER BY batch_id FOR UPDATE""",
        {"now": now},
    ).fetchall()
    for (batch_id,) in settling:
        conn.execute(_SETTLE_MEMBERS, {"now": now, "batch": batch_id})
        row = conn.execute(
            "UPDATE batches SET status = 'settled', settled_at = %s WHERE batch_id = %s "
            "RETURNING transaction_count, totals, net_positions, cross_currency_legs, late_count",
            (now, batch_id),
        ).fetchone()
        assert row is not None
        queue(conn, batch_id, "BatchSettled", event_id(), now, dict(zip(_SETTLED_FIELDS, row, strict=True)))
        outbox.batch_event(conn, "batch.settled", batch_id, now)
    return len(settling)


def freeze(conn: psycopg.Connection, batch_id: str, now: datetime) -> dict:
    """Close a batch: freeze its count, its totals per source currency and its positions."""
    count, totals = 0, {}
    for currency, n, amount in conn.execute(_TOTALS, (batch_id,)):
        count += n
        totals[currency] = amount
    net: dict[str, dict[str, dict[str, str]]] = {}
    for partner, currency, account, amount in conn.execute(_NET_POSITIONS, {"batch": batch_id}):
        net.setdefault(partner, {}).setdefault(currency, {})[account] = amount
    legs: dict[str, list[dict]] = {}
    for partner, *leg in conn.execute(_CROSS_CURRENCY_LEGS, (batch_id,)):
        legs.setdefault(partner, []).append(dict(zip(_LEG_FIELDS, leg, strict=True)))
    late = conn.execute(
        "UPDATE batches SET status = 'closed', closed_at = %s, transaction_count = %s, totals = %s, "
        "net_positions = %s, cross_currency_legs = %s WHERE batch_id = %s RETURNING late_count",
        (now, count, json.dumps(totals), json.dumps(net), json.dumps(legs), batch_id),
    ).fetchone()
    # members that joined on the late path (read after the batch of their 202 had closed)
    arrivals = conn.execute(
        "SELECT partner, transaction_id, routed_batch_id FROM transactions WHERE batch_id = %s AND late ORDER BY 1, 2",
        (batch_id,),
    ).fetchall()
    return {
        "transaction_count": count,
        "totals": totals,
        "net_positions": net,
        "cross_currency_legs": legs,
        "late_count": late[0] if late else 0,
        "late_arrivals": [
            {"partner": partner, "transaction_id": txn, "routed_batch_id": routed} for partner, txn, routed in arrivals
        ],
    }


def queue(
    conn: psycopg.Connection, batch_id: str, event_type: BatchEventType, event_id: str, now: datetime, facts: dict
) -> None:
    """Put a batch event in the outbox, in the step's transaction."""
    payload = batch_event(event_type, event_id, now, batch_id, facts)
    conn.execute(
        "INSERT INTO batch_events (batch_id, event_type, event_id, occurred_at, payload) VALUES (%s, %s, %s, %s, %s)",
        (batch_id, event_type, event_id, now, json.dumps(payload)),
    )
