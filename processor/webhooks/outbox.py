"""The webhook outbox (migration 0006): the events partners subscribed to, written by the statements
that change the state, in their transaction. Nothing is written for a partner that did not subscribe to
the type, and the fold runs none of this while nobody subscribed to a transaction event: unsubscribed
traffic costs nothing.

Each event's id is derived from what happened (its type, partner and what it is about), so writing it
again (a replay, a retried transaction) is no change: ON CONFLICT DO NOTHING.
"""

from collections.abc import Mapping
from datetime import datetime

import psycopg
from psycopg import sql


def _insert(select: str) -> str:
    """An INSERT of the events `select` gives as (event_id, partner, event_type, subject, payload,
    sequence_hint), numbered (webhook_events.sequence) in the order of `sequence_hint`."""
    return (
        "INSERT INTO webhook_events (event_id, partner, event_type, subject, occurred_at, payload)"
        f" SELECT event_id, partner, event_type, subject, %(now)s, payload FROM ({select}) e"
        " ORDER BY sequence_hint ON CONFLICT (event_id) DO NOTHING"
    )


# The transactions this poll batch folded (new ones, and better copies that took a transaction's place):
# batched, or moved when they took the late path (read after the batch of their 202 closed).
FOLDED = _insert("""
    SELECT webhook_event_id(s.event_type, t.partner, 'transactions/' || t.transaction_id || ' ' || t.batch_id)
            AS event_id, t.partner, s.event_type, 'transactions/' || t.transaction_id AS subject,
        webhook_body(s.event_type, %(now)s, webhook_transaction(t)) AS payload,
        (t.accepted_at, t.topic, t.partition, t.kafka_offset) AS sequence_hint
    FROM incoming i
    JOIN transactions t ON t.partner = i.partner AND t.transaction_id = i.transaction_id
        AND t.topic = i.topic AND t.partition = i.partition AND t.kafka_offset = i.kafka_offset
    JOIN webhook_subscriptions s ON s.partner = t.partner
        AND s.event_type = CASE WHEN t.late THEN 'transaction.moved' ELSE 'transaction.batched' END
""")

# The conflicts this poll batch recorded: the transaction as it stands, and the instruction refused.
CONFLICTED = _insert("""
    SELECT webhook_event_id(s.event_type, t.partner,
                            'transactions/' || t.transaction_id || ' ' || c.topic || '/' || c.partition || '/'
                            || c.kafka_offset) AS event_id,
        t.partner, s.event_type, 'transactions/' || t.transaction_id AS subject,
        webhook_body(s.event_type, %(now)s, (webhook_transaction(t)::jsonb || jsonb_build_object('conflict',
          jsonb_build_object(
            'amount', c.amount::text, 'currency', c.currency, 'batch', c.batch_id,
            'fingerprint', c.fingerprint, 'folded_fingerprint', c.folded_fingerprint,
            'accepted_at', webhook_instant(c.accepted_at),
            'kafka', jsonb_build_object('topic', c.topic, 'partition', c.partition, 'offset', c.kafka_offset))))::json)
            AS payload,
        (c.topic, c.partition, c.kafka_offset) AS sequence_hint
    FROM incoming i
    JOIN conflicts c ON c.topic = i.topic AND c.partition = i.partition AND c.kafka_offset = i.kafka_offset
    JOIN transactions t ON t.partner = c.partner AND t.transaction_id = c.transaction_id
    JOIN webhook_subscriptions s ON s.partner = t.partner AND s.event_type = 'transaction.conflict'
""")


def settle(where: str) -> str:
    """Settle the batched transactions `where` says (parameters `now` and its own), with a
    transaction.settled event for each of a subscribed partner; the statement returns how many."""
    return f"""
WITH settled AS (
    UPDATE transactions SET status = 'settled', settled_at = %(now)s WHERE status = 'batched' AND {where}
    RETURNING *
), notified AS (
    {
        _insert('''
        SELECT webhook_event_id(s.event_type, t.partner, 'transactions/' || t.transaction_id) AS event_id,
            t.partner, s.event_type, 'transactions/' || t.transaction_id AS subject,
            webhook_body(s.event_type, %(now)s, webhook_transaction(ROW(t.*)::transactions)) AS payload,
            (t.partner, t.transaction_id) AS sequence_hint
        FROM settled t
        JOIN webhook_subscriptions s ON s.partner = t.partner AND s.event_type = 'transaction.settled'
    ''')
    }
)
SELECT count(*) FROM settled
"""


# batch.closed or batch.settled for each subscribed partner with transactions in the batch (its own, or
# routed to it and read after it closed): the partner's part of it.
BATCH = _insert("""
    SELECT webhook_event_id(s.event_type, p.partner, 'batches/' || b.batch_id) AS event_id, p.partner,
        s.event_type, 'batches/' || b.batch_id AS subject,
        webhook_body(s.event_type, %(now)s, webhook_batch(b, p.partner)) AS payload, p.partner AS sequence_hint
    FROM batches b
    JOIN (SELECT partner FROM transactions WHERE batch_id = %(batch)s
          UNION SELECT partner FROM transactions WHERE routed_batch_id = %(batch)s AND late) p ON true
    JOIN webhook_subscriptions s ON s.partner = p.partner AND s.event_type = %(type)s
    WHERE b.batch_id = %(batch)s
""")


def batch_event(conn: psycopg.Connection, event_type: str, batch_id: str, now: datetime) -> None:
    """Write `event_type` of `batch_id` for each subscribed partner with a part in it."""
    conn.execute(BATCH, {"type": event_type, "batch": batch_id, "now": now})


def channel(schema: str) -> sql.Identifier:
    """The NOTIFY channel on which the fold announces events of `schema` (channels span the database)."""
    return sql.Identifier(f"webhook_events_{schema}")


def announce(cursor: psycopg.Cursor | psycopg.Connection, schema: str) -> None:
    """Tell the deliverers that events were written: delivered by PostgreSQL when the transaction commits
    (never for one rolled back), so they claim them at once rather than at their next poll."""
    cursor.execute(sql.SQL("NOTIFY {}").format(channel(schema)))


def subscribe(conn: psycopg.Connection, subscriptions: Mapping[str, frozenset[str]]) -> None:
    """Make `subscriptions` (partner -> event types) the subscribed set, in the caller's transaction."""
    conn.execute("DELETE FROM webhook_subscriptions")
    rows = [(partner, kind) for partner, kinds in sorted(subscriptions.items()) for kind in sorted(kinds)]
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO webhook_subscriptions (partner, event_type) VALUES (%s, %s)", rows)
