-- claim_ids (cluster): claim.lua's second step for the transaction ids of one slot, in order (take_id).
-- KEYS[i]    txn key of the i-th transaction
-- ARGV[1]    pending TTL ms
-- ARGV[i+1]  digest of the i-th transaction's idempotency key
-- returns per id 1 when it is now held for that key; 0 when another idempotency key owns it
local reply = {}
for i = 1, #KEYS do
  reply[i] = take_id(KEYS[i], ARGV[i + 1], ARGV[1]) and 1 or 0
end
return reply
