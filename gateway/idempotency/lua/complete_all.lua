-- complete_all: record every transaction of a bulk request that Kafka has, in one round trip (record.lua).
-- KEYS[2i-1], KEYS[2i]  idem and txn keys of the i-th transaction
-- ARGV[1]               TTL of the completed entries, milliseconds
-- ARGV[3i-1 .. 3i+1]    fingerprint, key digest, response of the i-th transaction
-- returns one 1 or 0 per transaction (see record)
local reply = {}
for i = 1, #KEYS / 2 do
  local a = 3 * i - 1
  reply[i] = record(KEYS[2 * i - 1], KEYS[2 * i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[1])
end
return reply
