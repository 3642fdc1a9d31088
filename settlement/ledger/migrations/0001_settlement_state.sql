-- Settlement state: a fold of the window topics. Everything here can be rebuilt by replaying the topics
-- from offset 0 into an empty schema (python -m processor replay).

-- Where the fold stands: the next offset of every partition, written in the same transaction as the
-- state that the records before it produced.
CREATE TABLE consumed (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- One row per distinct (partner, transaction id): the first record of it in the log.
CREATE TABLE transactions (
    partner              text        NOT NULL,
    transaction_id       text        NOT NULL,
    idempotency_key      text        NOT NULL,
    event_id             text        NOT NULL,
    fingerprint          text        NOT NULL,
    amount               numeric     NOT NULL CHECK (amount > 0),
    source_currency      text        NOT NULL,
    destination_currency text        NOT NULL,
    source_account       text        NOT NULL,
    destination_account  text        NOT NULL,
    counterparty_id      text        NOT NULL,
    settlement_window    text        NOT NULL CHECK (settlement_window IN ('rtgs', 't0', 't1')),
    requested_window     text,
    value_date           date        NOT NULL,
    batch_id             text        NOT NULL,
    reason               text        NOT NULL,
    topic                text        NOT NULL,
    partition            integer     NOT NULL,
    kafka_offset         bigint      NOT NULL,
    occurred_at          timestamptz NOT NULL,  -- when the gateway routed it (event time)
    accepted_at          timestamptz NOT NULL,  -- the record's timestamp in Kafka
    batched_at           timestamptz NOT NULL,  -- when the processor folded it in (processor clock)
    settles_at           timestamptz,           -- rtgs: when it settles (gross, one by one)
    settled_at           timestamptz,
    late                 boolean     NOT NULL DEFAULT false,  -- arrived after its batch closed
    status               text        NOT NULL CHECK (status IN ('batched', 'settled')),
    PRIMARY KEY (partner, transaction_id)
);
-- a batch's members (close, settle), and one partner's part of a batch (the status API)
CREATE INDEX transactions_batch ON transactions (batch_id, partner);
CREATE INDEX transactions_rtgs_due ON transactions (settles_at) WHERE status = 'batched' AND settles_at IS NOT NULL;

-- Records of a transaction already folded: a record written twice, or the same transaction routed to
-- another window after an uncertain delivery. Counted once, recorded here, never silently dropped.
CREATE TABLE duplicates (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    partner         text        NOT NULL,
    transaction_id  text        NOT NULL,
    event_id        text        NOT NULL,
    same_event      boolean     NOT NULL,  -- the same event written twice (a producer retry)
    batch_id        text        NOT NULL,
    PRIMARY KEY (topic, partition, kafka_offset)
);

-- Records that are not a TransactionAccepted event of a known schema version: kept, never folded.
CREATE TABLE unreadable (
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    kafka_offset bigint  NOT NULL,
    reason       text    NOT NULL,
    PRIMARY KEY (topic, partition, kafka_offset)
);

-- open -> closed (cut-off + grace, by event time: totals frozen) -> settled (value date, settlement time).
CREATE TABLE batches (
    batch_id          text        PRIMARY KEY,
    settlement_window text        NOT NULL,
    value_date        date        NOT NULL,
    currency          text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('open', 'closed', 'settled')),
    closes_at         timestamptz NOT NULL,
    settles_at        timestamptz NOT NULL,
    opened_at         timestamptz NOT NULL,
    closed_at         timestamptz,
    settled_at        timestamptz,
    transaction_count integer,          -- frozen at close
    totals            jsonb,            -- frozen at close: {currency: "exact decimal"}
    net_positions     jsonb,            -- frozen at close: {partner: {counterparty: {currency: "decimal"}}}
    late_count        integer     NOT NULL DEFAULT 0
);
CREATE INDEX batches_due ON batches (status, closes_at, settles_at);

-- Batch events waiting to be written to settlement.batches (an outbox: written in the transaction
-- that changed the batch, published after, marked when the broker has them).
CREATE TABLE batch_events (
    sequence     bigserial   PRIMARY KEY,
    batch_id     text        NOT NULL,
    event_type   text        NOT NULL CHECK (event_type IN ('BatchClosed', 'BatchSettled')),
    event_id     text        NOT NULL UNIQUE,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    published_at timestamptz,
    UNIQUE (batch_id, event_type)
);
