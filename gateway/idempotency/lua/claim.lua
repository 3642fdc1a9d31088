-- claim: what one idempotent submission is, and its keys claimed when new (prefixed to the scripts that
-- call it). One string per key, nothing kept that a later answer does not need:
--   key    key:{...}:<key id>     the idempotency key (24 h by default): 'P' fp at '|' ev '|' topic while
--                                 its record is produced; 'D' fp answer once Kafka has it (record.lua)
--   guard  txn:{...}:<id>         the transaction id (days: GATEWAY_TRANSACTION_ID_TTL_SECONDS): fp kid,
--                                 written once at the claim; a 64-hex digest is a key of the previous
--                                 layout (a hash idem:{...}:<digest>), read by the gateway
--   fp     the transaction's fingerprint (FP bytes, common.lua); kid: the 12-byte key id
--   at     the reservation time, Unix milliseconds of Redis's own clock (`now`), so that every gateway
--          judges a pending reservation's age by one clock
-- `claim` decides both keys at once on one node; a cluster keeps them in different slots and calls
-- `claim_key` (claim_entries) and `claim_id` (claim_ids) in two steps.
-- decisions: {'new'} | {'replay', answer} | {'in_flight', at, ev, topic} | {'mismatch'} | {'txn_taken'}
--   | {'recall'}     the guard is this payload's under this key, the key has forgotten it: the ledger says
--                    whether it was accepted (the key stays held: absent from the ledger, it is new)
--   | {'elsewhere'}  the guard is this payload's under another key: the ledger answers, or it is taken
--   | {'legacy', digest}  the guard is of the previous layout: the gateway reads its hash

-- the idempotency key, held for this submission when new (nil); otherwise what it already decides
local function claim_key(key, fp, at, ev, topic, pending_ttl)
  local old = redis.call('SET', key, 'P' .. fp .. at .. '|' .. ev .. '|' .. topic, 'NX', 'PX', pending_ttl, 'GET')
  if not old then return nil end
  if string.sub(old, 2, 1 + FP) ~= fp then return {'mismatch'} end
  if string.sub(old, 1, 1) == 'D' then return {'replay', string.sub(old, 2 + FP)} end
  local held_at, held_ev, held_topic = string.match(string.sub(old, 2 + FP), '^(%d+)|([^|]*)|(.*)$')
  return {'in_flight', held_at, held_ev, held_topic}
end

-- the transaction id, taken for this payload under this key when free (nil); otherwise what it decides
local function claim_id(guard, fp, kid, guard_ttl)
  local owner = fp .. kid
  local old = redis.call('SET', guard, owner, 'NX', 'PX', guard_ttl, 'GET')
  if not old then return nil end
  if old == owner then return {'recall'} end
  if #old == 64 then return {'legacy', old} end
  if string.sub(old, 1, FP) ~= fp then return {'txn_taken'} end
  return {'elsewhere'}
end

local function claim(key, guard, fp, kid, at, ev, topic, pending_ttl, guard_ttl)
  local decision = claim_key(key, fp, at, ev, topic, pending_ttl)
  if decision then return decision end
  decision = claim_id(guard, fp, kid, guard_ttl)
  if not decision then return {'new'} end
  if decision[1] ~= 'recall' then redis.call('DEL', key) end  -- not this submission's to hold after all
  return decision
end
