-- admit: the partner's admission, the first thing a request does in Redis (prefixed to the scripts
-- that call it, so it costs no round trip of its own).
-- A signed request's nonce must be new; then the partner's GCRA limit (generic cell rate algorithm:
-- one stored number, the theoretical arrival time, in microseconds of Redis's own clock, so every
-- worker and gateway instance shares one limit).
--   nonce_key     nonce:{partner}:<nonce digest>
--   nonce_ttl_ms  how long the signature could still be accepted; '0' when the request is not signed
--   rate_key      rate:{partner}
--   interval_us   microseconds per request at the sustained rate; '0' = unlimited
--   burst         requests allowed at once
--   cost          how many requests this one counts as (a bulk request: one per item); nil = 1
-- returns nil, remaining, reset_us when admitted (remaining -1: unlimited);
--         otherwise the refusal: {'nonce_replayed'} | {'limited', retry_after_us, reset_us}
local function admit(nonce_key, nonce_ttl_ms, rate_key, interval_us, burst, cost)
  if nonce_ttl_ms ~= '0' and not redis.call('SET', nonce_key, '1', 'NX', 'PX', nonce_ttl_ms) then
    return {'nonce_replayed'}
  end
  local interval = tonumber(interval_us)
  if interval == 0 then return nil, '-1', '0' end
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local tat = tonumber(redis.call('GET', rate_key) or '0')
  if tat < now then tat = now end
  local next_tat = tat + interval * tonumber(cost or '1')
  local allow_at = next_tat - interval * tonumber(burst)
  if now < allow_at then
    return {'limited', string.format('%.0f', allow_at - now), string.format('%.0f', tat - now)}
  end
  redis.call('SET', rate_key, string.format('%.0f', next_tat))  -- one key per partner: no expiry needed
  return nil, string.format('%d', math.floor((now - allow_at) / interval)), string.format('%.0f', next_tat - now)
end
