-- drop: undo a pending reservation (prefixed to release, release_entries and release_ids).
-- drop_key deletes the key while it is this submission's pending one (its event id `ev`) and returns 1;
-- 0 when it is absent, 'D' (done) or another's (nothing touched), -1 when absent: the id may still be ours.
-- drop_id deletes the guard while it is this payload's under this key.
local function drop_key(key, fp, ev)
  local held = redis.call('GET', key)
  if not held then return -1 end
  if string.sub(held, 1, 1) ~= 'P' or string.sub(held, 2, 1 + FP) ~= fp then return 0 end
  local _, held_ev = string.match(string.sub(held, 2 + FP), '^(%d+)|([^|]*)|')
  if held_ev ~= ev then return 0 end
  redis.call('DEL', key)
  return 1
end

local function drop_id(guard, fp, kid)
  if redis.call('GET', guard) == fp .. kid then redis.call('DEL', guard) end
  return 1
end
