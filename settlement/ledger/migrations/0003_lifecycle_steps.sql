-- Every step of the batch lifecycle that changed something (closed or settled a batch, settled rtgs
-- transactions), with the clock reading it used and where the fold stood. The clock decides part of
-- the state: a record read after its batch closed is late, and a closed batch's members or a settled
-- transaction stay where they are. A replay takes the same steps at the same offsets, so its state
-- equals the live one, late records and frozen totals included.
CREATE TABLE lifecycle_steps (
    sequence     bigserial   PRIMARY KEY,
    taken_at     timestamptz NOT NULL,  -- the processor's clock when it took the step
    offsets      jsonb       NOT NULL,  -- the next offset of every partition then: [[topic, partition, offset], ...]
    closed       integer     NOT NULL,
    settled      integer     NOT NULL,
    rtgs_settled integer     NOT NULL
);
