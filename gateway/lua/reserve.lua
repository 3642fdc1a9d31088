-- reserve: decide in one round trip what an idempotent submission is, and claim it when new.
-- KEYS[1]  idem:{partner}:<key digest>     hash: fp, state (pending|done), response
-- KEYS[2]  txn:{partner}:<transaction_id>  string: digest of the idempotency key that owns the id
-- ARGV[1]  fingerprint of the canonical transaction
-- ARGV[2]  digest of the idempotency key
-- ARGV[3]  pending TTL, milliseconds (outlives the producer's delivery timeout)
-- returns  {'new'} | {'replay', response} | {'in_flight'} | {'mismatch'} | {'txn_taken'}
local entry = redis.call('HMGET', KEYS[1], 'fp', 'state', 'response')
if entry[1] then
  if entry[1] ~= ARGV[1] then return {'mismatch'} end
  if entry[2] == 'done' then return {'replay', entry[3]} end
  return {'in_flight'}
end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[2] then return {'txn_taken'} end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'pending')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'new'}
