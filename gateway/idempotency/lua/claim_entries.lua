-- claim_entries (cluster): claim.lua's first step for the idempotency keys of one slot, in order, so a
-- key sent twice meets its first copy's reservation (found, hold).
-- KEYS[i]           idem key of the i-th transaction
-- ARGV[1], ARGV[2]  pending TTL ms, now ms
-- ARGV[3i .. 3i+2]  fingerprint, event id, topic of the i-th transaction
-- returns per transaction a claim decision; {'new'} means the entry is held and its id not yet taken
local reply = {}
for i = 1, #KEYS do
  local a = 3 * i
  reply[i] = found(KEYS[i], ARGV[a]) or hold(KEYS[i], ARGV[a], ARGV[1], ARGV[a + 1], ARGV[a + 2], ARGV[2])
end
return reply
