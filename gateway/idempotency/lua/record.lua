-- record: that Kafka has a transaction, with the answer every replay will get (prefixed to the scripts
-- that call it). Only the idempotency key changes: its pending details go, the answer comes; the
-- transaction id's guard was written at the claim.
--   key      see claim.lua
--   fp       fingerprint (8 bytes)
--   answer   the compact answer (gateway.intake.schemas.compact_answer), kept as given
--   ttl      TTL of the completed key, milliseconds
-- returns 1 when stored; 0 when another payload holds the key, or it is done already (the answer first
-- given stays the answer): it is put back as it was. A key that
-- vanished (expired, or lost with a Redis restart) is written again: Kafka has the record, so the key
-- must answer replays from now on.
local function record(key, fp, answer, ttl)
  local old = redis.call('SET', key, 'D' .. fp .. answer, 'PX', ttl, 'GET')
  if old and (string.sub(old, 1, 1) == 'D' or string.sub(old, 2, 1 + FP) ~= fp) then
    redis.call('SET', key, old, 'PX', ttl)
    return 0
  end
  return 1
end
