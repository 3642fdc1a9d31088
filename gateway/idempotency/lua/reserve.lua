-- reserve: admit the partner's request (admit.lua), then decide in the same round trip what an
-- idempotent submission is, and claim it when new (claim.lua; both prefixed).
-- KEYS[1], KEYS[2]  key and guard (see claim)
-- ARGV[1..6]        fingerprint, key id, pending TTL ms, guard TTL ms, event id, topic (see claim)
-- KEYS[3], KEYS[4], ARGV[7..9]  nonce key, rate key, nonce TTL, interval, burst (see admit)
-- returns  the admission's refusal ({'nonce_replayed'} | {'limited', retry_after_us, reset_us}), or
--          {remaining, reset_us, now, decision...} with claim's decision
local refused, remaining, reset = admit(KEYS[3], ARGV[7], KEYS[4], ARGV[8], ARGV[9])
if refused then return refused end
local at = now_ms()
local decision = claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], at, ARGV[5], ARGV[6], ARGV[3], ARGV[4])
return {remaining, reset, at, unpack(decision)}
