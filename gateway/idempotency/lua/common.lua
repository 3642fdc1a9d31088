-- common: what every script shares (prefixed to each).
-- FP: the bytes of a transaction's fingerprint kept in Redis (the first 8 of its SHA-256: two payloads
-- under one key or one id differ there but once in 2^64).
local FP = 8

-- Redis's clock in Unix milliseconds (a string): one clock for every gateway's reservations
local function now_ms()
  local clock = redis.call('TIME')
  return clock[1] .. string.format('%03d', math.floor(tonumber(clock[2]) / 1000))
end
