-- claim: what one idempotent submission is, and its key claimed when new (prefixed to reserve and
-- reserve_all, which call it once per transaction).
--   idem_key     idem:{partner}:<key digest>     hash: fp, state (pending|done), response; while pending
--                                                also ev, topic, at (the record it is about to produce)
--   txn_key      txn:{partner}:<transaction_id>  string: digest of the idempotency key that owns the id
--   fp           fingerprint of the canonical transaction
--   digest       digest of the idempotency key
--   pending_ttl  pending TTL, milliseconds (outlives any resolution of an in-doubt delivery)
--   ev, topic    event id and topic of the record to be produced
--   at           now, Unix milliseconds (the gateway's clock, for the age of a pending reservation)
-- returns {'new'} | {'replay', response} | {'in_flight', at, ev, topic} | {'mismatch'} | {'txn_taken'}
local function claim(idem_key, txn_key, fp, digest, pending_ttl, ev, topic, at)
  local entry = redis.call('HMGET', idem_key, 'fp', 'state', 'response', 'at', 'ev', 'topic')
  if entry[1] then
    if entry[1] ~= fp then return {'mismatch'} end
    if entry[2] == 'done' then return {'replay', entry[3]} end
    return {'in_flight', entry[4] or '0', entry[5] or '', entry[6] or ''}
  end
  local owner = redis.call('GET', txn_key)
  if owner and owner ~= digest then return {'txn_taken'} end
  redis.call('HSET', idem_key, 'fp', fp, 'state', 'pending', 'ev', ev, 'topic', topic, 'at', at)
  redis.call('PEXPIRE', idem_key, pending_ttl)
  redis.call('SET', txn_key, digest, 'PX', pending_ttl)
  return {'new'}
end
