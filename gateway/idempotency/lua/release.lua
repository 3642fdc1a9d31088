-- release: drop a pending reservation after a failed produce, so the partner's retry is new again (drop.lua).
-- KEYS[1] key, KEYS[2] guard; ARGV[1..3] fingerprint, key id, event id
-- returns 1 when released; 0 when the key was not this submission's pending one (nothing touched).
-- A key already gone (a rollback that half failed) still frees the id when it is this payload's.
local dropped = drop_key(KEYS[1], ARGV[1], ARGV[3])
if dropped == 0 then return 0 end
drop_id(KEYS[2], ARGV[1], ARGV[2])
return dropped == 1 and 1 or 0
