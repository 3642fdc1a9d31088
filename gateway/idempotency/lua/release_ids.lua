-- release_ids (cluster): drop the guards of one slot still this payload's under this key (drop_id).
-- KEYS[i]               guard of the i-th transaction
-- ARGV[2i-1], ARGV[2i]  fingerprint, key id of the i-th transaction
-- returns the number of guards looked at
for i = 1, #KEYS do
  drop_id(KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
end
return #KEYS
