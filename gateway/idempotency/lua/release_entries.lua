-- release_entries (cluster): drop the pending entries of one slot that are still this payload's (drop_entry).
-- KEYS[i]    idem key of the i-th transaction
-- ARGV[i]    fingerprint of the i-th transaction
-- returns one 1 (released) or 0 (not ours, or done: nothing touched) per entry
local reply = {}
for i = 1, #KEYS do
  reply[i] = drop_entry(KEYS[i], ARGV[i])
end
return reply
