-- complete: record one transaction Kafka has (record.lua, prefixed).
-- KEYS[1], KEYS[2]  idem and txn keys; ARGV[1..4] fingerprint, key digest, response, TTL ms (see record)
return record(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
