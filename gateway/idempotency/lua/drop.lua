-- drop: undo a pending reservation (prefixed to release, release_entries and release_ids).
--   idem_key, txn_key, fp, digest  see claim.lua
-- drop_entry returns 1 when the pending entry was this payload's and is gone; 0 when it was not ours
-- or already done (nothing touched). drop_id removes the id only while `digest` owns it.
local function drop_entry(idem_key, fp)
  local entry = redis.call('HMGET', idem_key, 'fp', 'state')
  if entry[1] ~= fp or entry[2] ~= 'pending' then return 0 end
  redis.call('DEL', idem_key)
  return 1
end

local function drop_id(txn_key, digest)
  if redis.call('GET', txn_key) == digest then redis.call('DEL', txn_key) end
  return 1
end
