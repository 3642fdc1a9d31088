-- wrk script: every request new transactions, with a mix of currencies, amounts and windows.
--   wrk -t1 -c1 -d10s --latency -s benchmarks/wrk_new_transactions.lua http://127.0.0.1:8000
-- With BENCH_BULK_ITEMS=N (N > 0) every request is a bulk request of N transactions to
-- /api/v1/transactions/bulk, and any answer but 200 (every transaction accepted) is counted and
-- printed at the end as "bulk non-200: N" (to wrk a 207 is a 2xx like any other).
-- With BENCH_REPLAY=N (N > 0) every thread sends the same N transactions over and over, their ids made
-- from BENCH_REPLAY_PREFIX: a first run submits them, the runs after it (same prefix) are exact replays.
-- Otherwise ids and idempotency keys are unique per run, thread and transaction. `prefix` is a global so
-- that setup() can give every thread its own through thread:set.
local items = tonumber(os.getenv("BENCH_BULK_ITEMS") or "0")
local replay = tonumber(os.getenv("BENCH_REPLAY") or "0")
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then headers["Authorization"] = authorization end
local threads = {}
local currencies = {"USD", "USD", "USD", "EUR", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"}
local windows = {',"settlement_window":"t1"', ',"settlement_window":"t1"', ',"settlement_window":"t0"',
                 ',"settlement_window":"rtgs"', ''}

function setup(thread)
  table.insert(threads, thread)
  if replay > 0 then
    thread:set("prefix", (os.getenv("BENCH_REPLAY_PREFIX") or "replay") .. "-" .. #threads)
  else
    thread:set("prefix", tostring(os.time()) .. "-" .. #threads .. "-" .. tostring(math.random(1, 1e9)))
  end
end

local function transaction()
  counter = counter + 1
  if replay > 0 and counter > replay then counter = 1 end
  local id = prefix .. "-" .. counter
  local source = currencies[counter % #currencies + 1]
  local destination = currencies[(counter * 7) % #currencies + 1]
  local amount = tostring(counter % 99991 + 1)
  if source ~= "JPY" then amount = amount .. "." .. string.format("%02d", counter % 100) end
  return '{"transaction_id":"wrk-' .. id .. '","amount":"' .. amount .. '","source_currency":"' .. source
    .. '","destination_currency":"' .. destination .. '","source_account":"acct_' .. (counter % 4999) .. '",'
    .. '"destination_account":"acct_dst_' .. (counter % 4993) .. '","counterparty_id":"cparty_' .. (counter % 199)
    .. '","idempotency_key":"wrk-' .. id .. '"' .. windows[counter % #windows + 1] .. '}'
end

if items > 0 then
  non200 = 0

  function request()
    local body = {}
    for i = 1, items do body[i] = transaction() end
    return wrk.format("POST", "/api/v1/transactions/bulk", headers, "[" .. table.concat(body, ",") .. "]")
  end

  -- defined only for bulk requests: a script with response() makes wrk parse every answer
  function response(status, headers, body)
    if status ~= 200 then non200 = non200 + 1 end
  end

  function done(summary, latency, requests)
    local total = 0
    for _, thread in ipairs(threads) do total = total + thread:get("non200") end
    io.write(string.format("bulk non-200: %d\n", total))
  end
else
  function request()
    return wrk.format("POST", "/api/v1/transactions/", headers, transaction())
  end
end
