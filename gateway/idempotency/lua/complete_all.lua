-- complete_all: record every transaction of a bulk request that Kafka has, in one round trip (record.lua);
-- on a cluster, one call per slot.
-- KEYS[i]               key of the i-th transaction
-- ARGV[1]               TTL of the completed keys, milliseconds
-- ARGV[2i], ARGV[2i+1]  fingerprint, answer of the i-th transaction
-- returns one 1 or 0 per transaction (see record)
local reply = {}
for i = 1, #KEYS do
  reply[i] = record(KEYS[i], ARGV[2 * i], ARGV[2 * i + 1], ARGV[1])
end
return reply
