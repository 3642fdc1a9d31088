-- claim_entries (cluster): claim.lua's first step for the idempotency keys of one slot, in order, so a
-- key sent twice meets its first copy's reservation (claim_key).
-- KEYS[i]           key of the i-th transaction
-- ARGV[1]           pending TTL ms
-- ARGV[3i-1 .. 3i+1]  fingerprint, event id, topic of the i-th transaction
-- returns {now, decision 1, decision 2, ...}; {'new'} means the key is held and its id not yet taken
local at = now_ms()
local reply = {at}
for i = 1, #KEYS do
  local a = 3 * i - 1
  reply[i + 1] = claim_key(KEYS[i], ARGV[a], at, ARGV[a + 1], ARGV[a + 2], ARGV[1]) or {'new'}
end
return reply
