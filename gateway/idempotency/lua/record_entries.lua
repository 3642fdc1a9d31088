-- record_entries (cluster): record.lua's entry half for the idempotency keys of one slot (record_entry).
-- KEYS[i]              idem key of the i-th transaction
-- ARGV[1]              TTL of the completed entries, milliseconds
-- ARGV[2i], ARGV[2i+1] fingerprint, response of the i-th transaction
-- returns one 1 or 0 per transaction (see record)
local reply = {}
for i = 1, #KEYS do
  reply[i] = record_entry(KEYS[i], ARGV[2 * i], ARGV[2 * i + 1], ARGV[1])
end
return reply
