-- record_ids (cluster): record.lua's id half for the transaction ids of one slot: each id owned by
-- its idempotency key for as long as the completed entry lives.
-- KEYS[i]    txn key of the i-th transaction
-- ARGV[1]    TTL of the completed entries, milliseconds
-- ARGV[i+1]  digest of the i-th transaction's idempotency key
-- returns the number of ids written
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
