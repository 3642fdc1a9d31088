-- record: that Kafka has a transaction, with the answer every replay will get (prefixed to the scripts
-- that call it). `record` writes both keys on one node; a cluster calls `record_entry` (record_entries)
-- and sets the id's owner (record_ids) in their own slots.
--   idem_key, txn_key  see claim.lua
--   fp, digest         fingerprint of the canonical transaction, digest of the idempotency key
--   response           the replay response body, stored verbatim
--   ttl                TTL of the completed entry, milliseconds
-- returns 1 when stored; 0 when another payload holds the key or it is already done.
-- A reservation that vanished (expired, or lost with a Redis restart) is recreated: Kafka has the
-- record, so the key must answer replays from now on.
local function record_entry(idem_key, fp, response, ttl)
  local entry = redis.call('HMGET', idem_key, 'fp', 'state')
  if entry[1] and (entry[1] ~= fp or entry[2] ~= 'pending') then return 0 end
  redis.call('HSET', idem_key, 'fp', fp, 'state', 'done', 'response', response)
  redis.call('PEXPIRE', idem_key, ttl)
  return 1
end

local function record(idem_key, txn_key, fp, digest, response, ttl)
  if record_entry(idem_key, fp, response, ttl) == 0 then return 0 end
  redis.call('SET', txn_key, digest, 'PX', ttl)
  return 1
end
