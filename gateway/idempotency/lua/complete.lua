-- complete: record that Kafka has the transaction and store the answer every replay will get.
-- KEYS[1]  idem:{partner}:<key digest>
-- KEYS[2]  txn:{partner}:<transaction_id>
-- ARGV[1]  fingerprint of the canonical transaction
-- ARGV[2]  digest of the idempotency key
-- ARGV[3]  the replay response body, stored verbatim
-- ARGV[4]  TTL of the completed entry, milliseconds
-- returns  1 when stored; 0 when another payload holds the key or it is already done
-- A reservation that vanished (expired, or lost with a Redis restart) is recreated: Kafka has the
-- record, so the key must answer replays from now on.
local entry = redis.call('HMGET', KEYS[1], 'fp', 'state')
if entry[1] and (entry[1] ~= ARGV[1] or entry[2] ~= 'pending') then return 0 end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'done', 'response', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return 1
