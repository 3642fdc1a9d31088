-- release_ids (cluster): drop the transaction ids of one slot still owned by the released keys (drop_id).
-- KEYS[i]    txn key of the i-th transaction
-- ARGV[i]    digest of the i-th transaction's idempotency key
-- returns the number of ids looked at
for i = 1, #KEYS do
  drop_id(KEYS[i], ARGV[i])
end
return #KEYS
