-- Conflicts: a record of a transaction already folded (same partner and transaction id) that carries
-- another instruction (another fingerprint: another amount, accounts, currencies, window). The gateway
-- refuses a second fingerprint for an id at the edge, so one only reaches the log through a gateway
-- bug, a Redis failover that lost the idempotency record, or an older gateway. It never replaces the
-- transaction folded first and never reaches a total: it is kept here, counted and alerted on, for
-- someone to settle with the partner. `duplicates` keeps only copies of the same instruction.
CREATE TABLE conflicts (
    topic              text        NOT NULL,
    partition          integer     NOT NULL,
    kafka_offset       bigint      NOT NULL,
    partner            text        NOT NULL,
    transaction_id     text        NOT NULL,
    event_id           text        NOT NULL,
    fingerprint        text        NOT NULL,  -- the instruction of this record
    folded_fingerprint text        NOT NULL,  -- the instruction of the transaction folded
    amount             numeric     NOT NULL,
    currency           text        NOT NULL,  -- its source currency
    batch_id           text        NOT NULL,  -- the batch it would have joined (its routing, or the late path)
    accepted_at        timestamptz NOT NULL,  -- the record's timestamp in Kafka (the 202's accepted_at)
    recorded_at        timestamptz NOT NULL,  -- when the processor found it (processor clock)
    PRIMARY KEY (topic, partition, kafka_offset)
);
CREATE INDEX conflicts_transaction ON conflicts (partner, transaction_id);

-- Which of two instructions for one id is the transaction depends on the order they were read in: the
-- first one folded stays (within one poll batch, the best copy of the batch). Like the clock, that read
-- order is recorded where it decided: every poll batch that recorded a conflict, with the offset each of
-- its partitions started at and the next offset of every partition after it. The replay folds the
-- records before it, then exactly its records as one poll batch, so it folds the same instruction. One
-- order with the lifecycle steps: the same sequence numbers them.
CREATE TABLE read_steps (
    sequence    bigint      PRIMARY KEY DEFAULT nextval('lifecycle_steps_sequence_seq'),
    started     jsonb       NOT NULL,  -- the poll batch's partitions: [[topic, partition, first offset], ...]
    offsets     jsonb       NOT NULL,  -- the next offset of every partition after it: [[topic, partition, offset], ...]
    recorded_at timestamptz NOT NULL   -- the processor's clock (not part of the state)
);
