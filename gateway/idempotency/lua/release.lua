-- release: drop a pending reservation after a failed produce, so the partner's retry is new again (drop.lua).
-- KEYS[1]  idem key, KEYS[2]  txn key
-- ARGV[1]  fingerprint of the canonical transaction
-- ARGV[2]  digest of the idempotency key
-- returns  1 when released; 0 when the reservation was not ours or already done (nothing touched)
if drop_entry(KEYS[1], ARGV[1]) == 0 then return 0 end
return drop_id(KEYS[2], ARGV[2])
