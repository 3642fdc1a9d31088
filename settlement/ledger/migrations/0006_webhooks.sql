-- Notifications to partners (Standard Webhooks). The fold and the lifecycle step write each event in the
-- transaction of the state change that caused it (an outbox), for the partners subscribed to its type
-- only; `python -m processor deliver` sends them, signed, at least once, in order per subject.

-- Who wants which event types: the registry's [partners.<id>.webhook] tables, synced by the processor
-- when it starts and whenever the registry file changes. Empty: no partner is notified of anything.
CREATE TABLE webhook_subscriptions (
    partner    text NOT NULL,
    event_type text NOT NULL,
    PRIMARY KEY (event_type, partner)
);

CREATE TABLE webhook_events (
    -- webhook-id: derived from what happened (type, partner, subject, and the record of a conflict), so
    -- an event is written once whatever reads the log again, and every attempt carries the same id
    event_id        text        PRIMARY KEY,
    sequence        bigserial   NOT NULL,        -- the order they were written in (indexed with the partner)
    partner         text        NOT NULL,
    event_type      text        NOT NULL,
    subject         text        NOT NULL,        -- transactions/<id> or batches/<id>: delivered in order
    occurred_at     timestamptz NOT NULL,        -- the state change, by the processor's clock
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),  -- written (wall clock): the delay's start
    -- the body as sent: {type, timestamp, data (the status API's shape)}; json, not jsonb: its text is
    -- what is signed, kept as built (4 µs a row cheaper to build, measured in issue 27)
    payload         json        NOT NULL,
    -- the delivery (the deliverer's; none of it is settlement state)
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,  -- every attempt so far (webhook_attempts numbers them)
    schedule_from   integer     NOT NULL DEFAULT 0,  -- the attempts before the retry schedule began again (a resend)
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),  -- due; while an attempt runs, its lease
    delivered_at    timestamptz,
    last_outcome    text
);
-- what is due, per partner; and the earlier pending event of a subject, which holds the later ones back
CREATE INDEX webhook_events_due ON webhook_events (partner, next_attempt_at, sequence) WHERE state = 'pending';
CREATE INDEX webhook_events_subject ON webhook_events (partner, subject, sequence) WHERE state = 'pending';
-- a partner's deliveries, newest first (GET /api/v1/webhooks/deliveries)
CREATE INDEX webhook_events_partner ON webhook_events (partner, sequence);

-- Every attempt of every delivery and how it ended.
CREATE TABLE webhook_attempts (
    event_id    text        NOT NULL REFERENCES webhook_events (event_id),
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    outcome     text        NOT NULL,  -- delivered, status, timeout, unreachable, refused-address
    status_code integer,               -- the receiver's HTTP status, when it answered
    detail      text,
    PRIMARY KEY (event_id, attempt)
);

-- An instant as the status API writes it (ISO 8601, UTC, milliseconds).
CREATE FUNCTION webhook_instant(at timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- A transaction as GET /api/v1/transactions/{id} answers it.
CREATE FUNCTION webhook_transaction(t transactions) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'transaction_id', t.transaction_id, 'status', t.status, 'window', t.settlement_window,
        'value_date', t.value_date::text, 'batch', t.batch_id, 'amount', t.amount::text,
        'currency', t.source_currency,
        'kafka', json_build_object('topic', t.topic, 'partition', t.partition, 'offset', t.kafka_offset),
        'steps', json_build_object('accepted_at', webhook_instant(t.accepted_at),
                                    'batched_at', webhook_instant(t.batched_at),
                                    'settled_at', webhook_instant(t.settled_at)),
        'late', t.late, 'routed_batch', t.routed_batch_id, 'routed_value_date', t.routed_value_date::text)
$$;

-- A batch with one partner's part of it, as GET /api/v1/batches/{id} answers it.
CREATE FUNCTION webhook_batch(b batches, who text) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'batch_id', b.batch_id, 'window', b.settlement_window, 'value_date', b.value_date::text,
        'currency', b.currency, 'status', b.status, 'closes_at', webhook_instant(b.closes_at),
        'settles_at', webhook_instant(b.settles_at), 'opened_at', webhook_instant(b.opened_at),
        'closed_at', webhook_instant(b.closed_at), 'settled_at', webhook_instant(b.settled_at),
        'transaction_count', coalesce((SELECT count(*) FROM transactions t
                                       WHERE t.partner = who AND t.batch_id = b.batch_id), 0),
        'totals', coalesce((SELECT json_object_agg(currency, amount ORDER BY currency) FROM (
                               SELECT source_currency AS currency, sum(amount)::text AS amount FROM transactions t
                               WHERE t.partner = who AND t.batch_id = b.batch_id GROUP BY 1) s), '{}'::json),
        'net_positions', CASE WHEN b.status <> 'open' THEN coalesce(b.net_positions -> who, '{}') END,
        'cross_currency_legs', CASE WHEN b.status <> 'open' THEN coalesce(b.cross_currency_legs -> who, '[]') END,
        'late_transactions', coalesce((SELECT json_agg(transaction_id ORDER BY transaction_id) FROM transactions t
                                       WHERE t.partner = who AND t.routed_batch_id = b.batch_id AND t.late), '[]'::json))
$$;

-- The body, in Standard Webhooks' recommended shape.
CREATE FUNCTION webhook_body(kind text, at timestamptz, data json) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object('type', kind, 'timestamp', webhook_instant(at), 'data', data)
$$;
-- The id of the event of type `kind` for `partner` about what `occurrence` names.
CREATE FUNCTION webhook_event_id(kind text, partner text, occurrence text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'evt_' || md5(kind || ' ' || partner || ' ' || occurrence)
$$;
