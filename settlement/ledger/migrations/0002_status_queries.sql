-- The gateway's status API lists a partner's batches by value date.
CREATE INDEX batches_listing ON batches (value_date, batch_id);
