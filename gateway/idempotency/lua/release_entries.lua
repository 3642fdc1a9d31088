-- release_entries (cluster): drop the pending keys of one slot that are still these submissions' (drop_key).
-- KEYS[i]               key of the i-th transaction
-- ARGV[2i-1], ARGV[2i]  fingerprint, event id of the i-th transaction
-- returns per key 1 (released), 0 (done or another's: nothing touched) or -1 (absent)
local reply = {}
for i = 1, #KEYS do
  reply[i] = drop_key(KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
return reply
