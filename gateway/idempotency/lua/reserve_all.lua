-- reserve_all: a bulk request's whole Redis work before Kafka, in one round trip: admit the partner's
-- request at the cost of its item count (admit.lua), then claim each transaction in order (claim.lua),
-- exactly as `reserve` would one by one.
-- KEYS[1], KEYS[2]        nonce key, rate key (see admit)
-- KEYS[2i+1], KEYS[2i+2]  key and guard of the i-th transaction (i from 1)
-- ARGV[1..4]              nonce TTL, interval, burst, cost (see admit)
-- ARGV[5], ARGV[6]        pending TTL ms, guard TTL ms (see claim)
-- ARGV[4i+3 .. 4i+6]      fingerprint, key id, event id, topic of the i-th transaction
-- returns  the admission's refusal, or {remaining, reset_us, now, decision 1, decision 2, ...}
local refused, remaining, reset = admit(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if refused then return refused end
local at = now_ms()
local reply = {remaining, reset, at}
for i = 1, (#KEYS - 2) / 2 do
  local a = 4 * i + 3
  reply[i + 3] = claim(KEYS[2 * i + 1], KEYS[2 * i + 2], ARGV[a], ARGV[a + 1], at, ARGV[a + 2], ARGV[a + 3], ARGV[5], ARGV[6])
end
return reply
