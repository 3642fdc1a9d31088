-- Event time decides: a batch closes when the watermark (the oldest of the partitions' progress in
-- event time) passes its cut-off plus the grace, never by when the processor happened to read a record.

-- Each partition's progress in event time: the newest event time folded (occurred_at, the routing
-- instant; never ahead of the processor's clock), or the instant the partition was found read to its
-- end offset, whichever is later.
ALTER TABLE consumed ADD COLUMN event_time timestamptz;

-- The watermark the batch lifecycle has closed batches by (the latest step that closed one). A record
-- whose batch closes at or before it arrived late: it moves to the next batch of its window and currency.
CREATE TABLE lifecycle (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    closed_through timestamptz NOT NULL
);
INSERT INTO lifecycle (closed_through)
SELECT coalesce(max(taken_at), 'epoch') FROM lifecycle_steps;  -- steps so far closed by the clock

ALTER TABLE lifecycle_steps ADD COLUMN watermark timestamptz;
UPDATE lifecycle_steps SET watermark = taken_at;
ALTER TABLE lifecycle_steps ALTER COLUMN watermark SET NOT NULL;

-- The late path: a transaction read after its batch closed settles in the next batch of its window and
-- currency (batch_id, value_date); the batch and value date its 202 named are kept here.
ALTER TABLE transactions ADD COLUMN routed_batch_id text, ADD COLUMN routed_value_date date;
UPDATE transactions SET routed_batch_id = batch_id, routed_value_date = value_date WHERE late;
ALTER TABLE transactions ADD CONSTRAINT transactions_late_path
    CHECK (late = (routed_batch_id IS NOT NULL) AND late = (routed_value_date IS NOT NULL));
CREATE INDEX transactions_routed_batch ON transactions (routed_batch_id, partner) WHERE late;

-- NaN and Infinity pass `amount > 0` in PostgreSQL's numeric (NaN sorts above every number): neither
-- may ever reach a total.
ALTER TABLE transactions DROP CONSTRAINT transactions_amount_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_amount_finite CHECK (amount > 0 AND amount < 'Infinity');

-- Positions that mean what they say (frozen at close): net_positions becomes {partner: {currency:
-- {account: signed amount}}} of same-currency transactions (zero-sum per partner and currency), and the
-- cross-currency transactions are listed apart per leg, in their source currency.
ALTER TABLE batches ADD COLUMN cross_currency_legs jsonb;
COMMENT ON COLUMN batches.net_positions IS
    'frozen at close: {partner: {currency: {account: signed exact decimal}}}, same-currency transactions';
COMMENT ON COLUMN batches.cross_currency_legs IS
    'frozen at close: {partner: [{source_account, source_currency, destination_account, destination_currency, count, amount}]}';
