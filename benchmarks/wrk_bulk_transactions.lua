-- wrk script: every request a bulk request of BENCH_BULK_ITEMS new transactions (default 100), with a
-- mix of currencies, amounts and windows; any answer but 200 (every transaction accepted) is counted
-- and printed at the end as "bulk non-200: N".
--   BENCH_BULK_ITEMS=500 wrk -t2 -c8 -d10s --latency -s benchmarks/wrk_bulk_transactions.lua http://127.0.0.1:8000
local items = tonumber(os.getenv("BENCH_BULK_ITEMS") or "100")
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then headers["Authorization"] = authorization end
local threads = {}
local currencies = {"USD", "USD", "USD", "EUR", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"}
local windows = {',"settlement_window":"t1"', ',"settlement_window":"t1"', ',"settlement_window":"t0"',
                 ',"settlement_window":"rtgs"', ''}
non200 = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("prefix", tostring(os.time()) .. "-" .. #threads .. "-" .. tostring(math.random(1, 1e9)))
end

local function transaction()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local source = currencies[counter % #currencies + 1]
  local destination = currencies[(counter * 7) % #currencies + 1]
  local amount = tostring(counter % 99991 + 1)
  if source ~= "JPY" then amount = amount .. "." .. string.format("%02d", counter % 100) end
  return '{"transaction_id":"wrkb-' .. id .. '","amount":"' .. amount .. '","source_currency":"' .. source
    .. '","destination_currency":"' .. destination .. '","source_account":"acct_' .. (counter % 4999) .. '",'
    .. '"destination_account":"acct_dst_' .. (counter % 4993) .. '","counterparty_id":"cparty_' .. (counter % 199)
    .. '","idempotency_key":"wrkb-' .. id .. '"' .. windows[counter % #windows + 1] .. '}'
end

function request()
  local body = {}
  for i = 1, items do body[i] = transaction() end
  return wrk.format("POST", "/api/v1/transactions/bulk", headers, "[" .. table.concat(body, ",") .. "]")
end

function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("non200") end
  io.write(string.format("bulk non-200: %d\n", total))
end
