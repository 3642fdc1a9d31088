-- wrk script: every request a new transaction, with a mix of currencies, amounts and windows.
--   wrk -t1 -c1 -d10s --latency -s benchmarks/wrk_new_transactions.lua http://127.0.0.1:8000
-- Ids and idempotency keys are unique per run, thread and request. `prefix` is a global so that
-- setup() can give every thread its own through thread:set.
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then headers["Authorization"] = authorization end
local threads = 0
local currencies = {"USD", "USD", "USD", "EUR", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"}
local windows = {',"settlement_window":"t1"', ',"settlement_window":"t1"', ',"settlement_window":"t0"',
                 ',"settlement_window":"rtgs"', ''}

function setup(thread)
  threads = threads + 1
  thread:set("prefix", tostring(os.time()) .. "-" .. threads .. "-" .. tostring(math.random(1, 1e9)))
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local source = currencies[counter % #currencies + 1]
  local destination = currencies[(counter * 7) % #currencies + 1]
  local amount = tostring(counter % 99991 + 1)
  if source ~= "JPY" then amount = amount .. "." .. string.format("%02d", counter % 100) end
  local body = '{"transaction_id":"wrk-' .. id .. '","amount":"' .. amount .. '","source_currency":"' .. source
    .. '","destination_currency":"' .. destination .. '","source_account":"acct_' .. (counter % 4999) .. '",'
    .. '"destination_account":"acct_dst_' .. (counter % 4993) .. '","counterparty_id":"cparty_' .. (counter % 199)
    .. '","idempotency_key":"wrk-' .. id .. '"' .. windows[counter % #windows + 1] .. '}'
  return wrk.format("POST", "/api/v1/transactions/", headers, body)
end
