"""The SQL of the fold (processor/store.py runs it), each statement under the comment that says why it
is written so. Apart from the Python so that the store reads as the steps it takes."""

from psycopg import sql

from processor.records import COPY_COLUMNS

# One poll batch's records, as COPY writes them (emptied at every commit).
INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS incoming (
    topic text, partition integer, kafka_offset bigint, partner text, transaction_id text, idempotency_key text,
    event_id text, fingerprint text, amount numeric, source_currency text, destination_currency text,
    source_account text, destination_account text, counterparty_id text, settlement_window text,
    requested_window text, reason text, occurred_at timestamptz, batch_id text, value_date date,
    routed_batch_id text, routed_value_date date, late boolean, accepted_ms bigint
) ON COMMIT DELETE ROWS
"""
COPY = sql.SQL("COPY incoming ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)))

# Which record of a transaction is *the* transaction must not depend on the order the partitions were
# read in (a replay reads them in another), only on the log and on the lifecycle steps taken between
# reads: it is the best copy by (late, record timestamp, topic, partition, offset), so a copy on time
# beats a late one, and then the earliest wins. A copy read later that is better takes the place of the
# one folded unless that one is frozen: in a batch that has closed (in its totals), or settled (rtgs).
# The one it replaces becomes a duplicate.
#
# That holds for copies of one instruction (the same fingerprint). A record with another fingerprint
# never takes the place of the transaction, better placed or not: the partner may have seen its amount
# batched in the status API, and a frozen total may hold it. It is a conflict. So the instruction that
# stands is the one of the first poll batch that held the transaction (its best copy there, whatever the
# order the batch's records came in). What a poll batch held and what was folded before it depend on
# the read order: each poll batch that found a conflict is recorded as a read step (migration 0005),
# and the replay folds the records before it, then exactly its records together.

# New transactions: the best record of each (partner, transaction id) not folded yet. One that took the
# late path counts in the late_count of the batch it was routed to (and in the totals of the one it joins).
FOLD = """
WITH inserted AS (
    INSERT INTO transactions (
        partner, transaction_id, idempotency_key, event_id, fingerprint, amount, source_currency,
        destination_currency, source_account, destination_account, counterparty_id, settlement_window,
        requested_window, value_date, batch_id, reason, topic, partition, kafka_offset, occurred_at,
        accepted_at, batched_at, settles_at, late, routed_batch_id, routed_value_date, status)
    SELECT i.partner, i.transaction_id, i.idempotency_key, i.event_id, i.fingerprint, i.amount, i.source_currency,
        i.destination_currency, i.source_account, i.destination_account, i.counterparty_id, i.settlement_window,
        i.requested_window, i.value_date, i.batch_id, i.reason, i.topic, i.partition, i.kafka_offset, i.occurred_at,
        'epoch'::timestamptz + i.accepted_ms * interval '1 millisecond', %(now)s,
        CASE WHEN i.settlement_window = 'rtgs' THEN greatest(i.occurred_at, b.settles_at) END,
        i.late, i.routed_batch_id, i.routed_value_date, 'batched'
    FROM incoming i JOIN batches b ON b.batch_id = i.batch_id
    ORDER BY i.late, i.accepted_ms, i.topic, i.partition, i.kafka_offset  -- the best copy is inserted
    ON CONFLICT (partner, transaction_id) DO NOTHING
    RETURNING routed_batch_id, late
), counted AS (
    UPDATE batches b SET late_count = b.late_count + x.n
    FROM (SELECT routed_batch_id, count(*) AS n FROM inserted WHERE late GROUP BY 1) x
    WHERE b.batch_id = x.routed_batch_id
    RETURNING x.n
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM inserted WHERE late)
"""

# Transactions already folded, not frozen, of which this poll batch holds a better copy of the same
# instruction: replaced by it.
BETTER_COPIES = """
WITH better AS (
    SELECT DISTINCT ON (i.partner, i.transaction_id) i.*,
        'epoch'::timestamptz + i.accepted_ms * interval '1 millisecond' AS accepted_at,
        wanted.settles_at AS batch_settles_at, t.routed_batch_id AS held_routed, t.late AS held_late
    FROM incoming i
    JOIN transactions t ON t.partner = i.partner AND t.transaction_id = i.transaction_id
    JOIN batches held ON held.batch_id = t.batch_id
    JOIN batches wanted ON wanted.batch_id = i.batch_id
    WHERE held.status = 'open' AND t.status = 'batched' AND i.fingerprint = t.fingerprint
      AND (i.late, 'epoch'::timestamptz + i.accepted_ms * interval '1 millisecond', i.topic, i.partition,
           i.kafka_offset)
        < (t.late, t.accepted_at, t.topic, t.partition, t.kafka_offset)
    ORDER BY i.partner, i.transaction_id, i.late, i.accepted_ms, i.topic, i.partition, i.kafka_offset
), replaced AS (
    INSERT INTO duplicates (topic, partition, kafka_offset, partner, transaction_id, event_id, same_event, batch_id)
    SELECT t.topic, t.partition, t.kafka_offset, t.partner, t.transaction_id, t.event_id, t.event_id = e.event_id,
        t.batch_id
    FROM transactions t JOIN better e ON e.partner = t.partner AND e.transaction_id = t.transaction_id
    ON CONFLICT DO NOTHING
), counted AS (  -- a late copy replaced leaves its routed batch's late count, a late one taking its place joins one
    UPDATE batches b SET late_count = b.late_count + moved.n
    FROM (
        SELECT batch_id, sum(n) AS n FROM (
            SELECT held_routed AS batch_id, -1 AS n FROM better WHERE held_late
            UNION ALL SELECT routed_batch_id, 1 FROM better WHERE late
        ) moves GROUP BY batch_id HAVING sum(n) <> 0
    ) moved
    WHERE b.batch_id = moved.batch_id
)
UPDATE transactions t SET
    idempotency_key = e.idempotency_key, event_id = e.event_id, fingerprint = e.fingerprint, amount = e.amount,
    source_currency = e.source_currency, destination_currency = e.destination_currency,
    source_account = e.source_account, destination_account = e.destination_account,
    counterparty_id = e.counterparty_id, settlement_window = e.settlement_window,
    requested_window = e.requested_window, value_date = e.value_date, batch_id = e.batch_id, reason = e.reason,
    topic = e.topic, partition = e.partition, kafka_offset = e.kafka_offset, occurred_at = e.occurred_at,
    accepted_at = e.accepted_at, late = e.late, routed_batch_id = e.routed_batch_id,
    routed_value_date = e.routed_value_date,
    settles_at = CASE WHEN e.settlement_window = 'rtgs' THEN greatest(e.occurred_at, e.batch_settles_at) END
FROM better e
WHERE t.partner = e.partner AND t.transaction_id = e.transaction_id
"""

# Every other record of the instruction of a transaction already folded: recorded, never silently dropped.
DUPLICATES = """
INSERT INTO duplicates (topic, partition, kafka_offset, partner, transaction_id, event_id, same_event, batch_id)
SELECT i.topic, i.partition, i.kafka_offset, i.partner, i.transaction_id, i.event_id, i.event_id = t.event_id,
    i.batch_id
FROM incoming i JOIN transactions t ON t.partner = i.partner AND t.transaction_id = i.transaction_id
WHERE (t.topic, t.partition, t.kafka_offset) IS DISTINCT FROM (i.topic, i.partition, i.kafka_offset)
  AND i.fingerprint = t.fingerprint
ON CONFLICT DO NOTHING
"""

# Every record of another instruction for a transaction already folded: a conflict, recorded apart (never
# folded, in no total), returned to be counted and logged.
CONFLICTS = """
INSERT INTO conflicts (topic, partition, kafka_offset, partner, transaction_id, event_id, fingerprint,
    folded_fingerprint, amount, currency, batch_id, accepted_at, recorded_at)
SELECT i.topic, i.partition, i.kafka_offset, i.partner, i.transaction_id, i.event_id, i.fingerprint,
    t.fingerprint, i.amount, i.source_currency, i.batch_id,
    'epoch'::timestamptz + i.accepted_ms * interval '1 millisecond', %(now)s
FROM incoming i JOIN transactions t ON t.partner = i.partner AND t.transaction_id = i.transaction_id
WHERE i.fingerprint <> t.fingerprint
ON CONFLICT DO NOTHING
RETURNING partner, transaction_id, fingerprint, folded_fingerprint, topic, partition, kafka_offset
"""

DIGEST = (
    "SELECT partner, transaction_id, idempotency_key, event_id, fingerprint, amount, source_currency,"
    " destination_currency, source_account, destination_account, counterparty_id, settlement_window,"
    " requested_window, value_date, batch_id, reason, topic, partition, kafka_offset, occurred_at, accepted_at,"
    " settles_at, late, routed_batch_id, routed_value_date, status, settled_at FROM transactions"
    " ORDER BY partner, transaction_id",
    "SELECT topic, partition, kafka_offset, partner, transaction_id, event_id, batch_id"
    " FROM duplicates ORDER BY topic, partition, kafka_offset",
    "SELECT topic, partition, kafka_offset, partner, transaction_id, event_id, fingerprint, folded_fingerprint,"
    " amount, currency, batch_id, accepted_at FROM conflicts ORDER BY topic, partition, kafka_offset",
    "SELECT topic, partition, kafka_offset, reason FROM unreadable ORDER BY topic, partition, kafka_offset",
    "SELECT batch_id, source_currency, count(*), sum(amount) FROM transactions GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT batch_id, settlement_window, value_date, currency, status, closes_at, settles_at, closed_at, settled_at,"
    " transaction_count, totals, net_positions, cross_currency_legs, late_count FROM batches ORDER BY batch_id",
)
