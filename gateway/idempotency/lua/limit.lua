-- limit: the admission alone, for requests that never reserve (a status query, a refused submission),
-- and on a cluster before the claims, which live in other slots.
-- KEYS[1] nonce key, KEYS[2] rate key; ARGV[1] nonce TTL ms, ARGV[2] interval µs, ARGV[3] burst,
-- ARGV[4] cost (optional; see admit)
-- returns {'admitted', remaining, reset_us} | {'nonce_replayed'} | {'limited', retry_after_us, reset_us}
local refused, remaining, reset = admit(KEYS[1], ARGV[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if refused then return refused end
return {'admitted', remaining, reset}
