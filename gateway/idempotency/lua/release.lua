-- release: drop a pending reservation after a failed produce, so the partner's retry is new again.
-- KEYS[1]  idem:{partner}:<key digest>
-- KEYS[2]  txn:{partner}:<transaction_id>
-- ARGV[1]  fingerprint of the canonical transaction
-- ARGV[2]  digest of the idempotency key
-- returns  1 when released; 0 when the reservation was not ours or already done (nothing touched)
local entry = redis.call('HMGET', KEYS[1], 'fp', 'state')
if entry[1] ~= ARGV[1] or entry[2] ~= 'pending' then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
