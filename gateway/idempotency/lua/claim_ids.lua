-- claim_ids (cluster): claim.lua's second step for the transaction ids of one slot, in order (claim_id).
-- KEYS[i]              guard of the i-th transaction
-- ARGV[1]              guard TTL ms
-- ARGV[2i], ARGV[2i+1] fingerprint, key id of the i-th transaction
-- returns per id {'new'} when it is now taken for this payload and key, else claim_id's decision
local reply = {}
for i = 1, #KEYS do
  reply[i] = claim_id(KEYS[i], ARGV[2 * i], ARGV[2 * i + 1], ARGV[1]) or {'new'}
end
return reply
