-- wrk script: every request a new transaction (unique id and idempotency key per thread and counter).
-- wrk -t1 -c1 -d10s -s benchmarks/wrk_new_transactions.lua http://127.0.0.1:8000
-- `prefix` is a global so that setup() can give every thread its own through thread:set.
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("prefix", tostring(os.time()) .. "-" .. threads .. "-" .. tostring(math.random(1, 1e9)))
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local body = '{"transaction_id":"wrk-' .. id .. '","amount":"250.00","source_currency":"USD",'
    .. '"destination_currency":"GBP","source_account":"acct-' .. (counter % 97) .. '",'
    .. '"destination_account":"acct_uk_99","counterparty_id":"cparty_london",'
    .. '"idempotency_key":"wrk-' .. id .. '","settlement_window":"t1"}'
  return wrk.format("POST", "/api/v1/transactions/", {["Content-Type"] = "application/json"}, body)
end
