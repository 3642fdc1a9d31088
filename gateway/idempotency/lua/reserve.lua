-- reserve: admit the partner's request (admit.lua, prefixed), then decide in the same round trip what
-- an idempotent submission is, and claim it when new.
-- KEYS[1]  idem:{partner}:<key digest>     hash: fp, state (pending|done), response; while pending
--                                          also ev, topic, at (the record it is about to produce)
-- KEYS[2]  txn:{partner}:<transaction_id>  string: digest of the idempotency key that owns the id
-- ARGV[1]  fingerprint of the canonical transaction
-- ARGV[2]  digest of the idempotency key
-- ARGV[3]  pending TTL, milliseconds (outlives any resolution of an in-doubt delivery)
-- ARGV[4]  event id of the record to be produced
-- ARGV[5]  topic it goes to
-- ARGV[6]  now, Unix milliseconds (the gateway's clock, for the age of a pending reservation)
-- KEYS[3], KEYS[4], ARGV[7..9]  nonce key, rate key, nonce TTL, interval, burst (see admit.lua)
-- returns  the admission's refusal ({'nonce_replayed'} | {'limited', retry_after_us, reset_us}), or
--          {remaining, reset_us, decision...}: {'new'} | {'replay', response} | {'in_flight', at, ev, topic}
--          | {'mismatch'} | {'txn_taken'}
local refused, remaining, reset = admit(KEYS[3], ARGV[7], KEYS[4], ARGV[8], ARGV[9])
if refused then return refused end
local function decided(...) return {remaining, reset, ...} end
local entry = redis.call('HMGET', KEYS[1], 'fp', 'state', 'response', 'at', 'ev', 'topic')
if entry[1] then
  if entry[1] ~= ARGV[1] then return decided('mismatch') end
  if entry[2] == 'done' then return decided('replay', entry[3]) end
  return decided('in_flight', entry[4] or '0', entry[5] or '', entry[6] or '')
end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[2] then return decided('txn_taken') end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'pending', 'ev', ARGV[4], 'topic', ARGV[5], 'at', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return decided('new')
