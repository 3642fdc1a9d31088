-- complete: record one transaction Kafka has (record.lua, prefixed).
-- KEYS[1]  key; ARGV[1..3] fingerprint, answer, TTL ms (see record)
return record(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
