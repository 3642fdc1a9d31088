-- claim: what one idempotent submission is, and its key claimed when new (prefixed to the scripts that
-- call it). `claim` decides both keys at once, on one node; a cluster keeps them in different slots and
-- calls `found`/`hold` (claim_entries) and `take_id` (claim_ids) in two steps.
--   idem_key     idem:{...}:<key digest>     hash: fp, state (pending|done), response; while pending
--                                            also ev, topic, at (the record it is about to produce)
--   txn_key      txn:{...}:<transaction_id>  string: digest of the idempotency key that owns the id
--   fp           fingerprint of the canonical transaction
--   digest       digest of the idempotency key
--   pending_ttl  pending TTL, milliseconds (outlives any resolution of an in-doubt delivery)
--   ev, topic    event id and topic of the record to be produced
--   at           now, Unix milliseconds (the gateway's clock, for the age of a pending reservation)
-- decisions: {'new'} | {'replay', response} | {'in_flight', at, ev, topic} | {'mismatch'} | {'txn_taken'}

-- what the key's entry already decides, or nil when the key is new
local function found(idem_key, fp)
  local entry = redis.call('HMGET', idem_key, 'fp', 'state', 'response', 'at', 'ev', 'topic')
  if not entry[1] then return nil end
  if entry[1] ~= fp then return {'mismatch'} end
  if entry[2] == 'done' then return {'replay', entry[3]} end
  return {'in_flight', entry[4] or '0', entry[5] or '', entry[6] or ''}
end

-- the key's entry, pending for this submission
local function hold(idem_key, fp, pending_ttl, ev, topic, at)
  redis.call('HSET', idem_key, 'fp', fp, 'state', 'pending', 'ev', ev, 'topic', topic, 'at', at)
  redis.call('PEXPIRE', idem_key, pending_ttl)
  return {'new'}
end

-- the transaction id, for the idempotency key `digest`; false when another key owns it
local function take_id(txn_key, digest, ttl)
  local owner = redis.call('GET', txn_key)
  if owner and owner ~= digest then return false end
  redis.call('SET', txn_key, digest, 'PX', ttl)
  return true
end

local function claim(idem_key, txn_key, fp, digest, pending_ttl, ev, topic, at)
  local decision = found(idem_key, fp)
  if decision then return decision end
  if not take_id(txn_key, digest, pending_ttl) then return {'txn_taken'} end
  return hold(idem_key, fp, pending_ttl, ev, topic, at)
end
