-- wrk script: POST a small JSON body with a fresh Idempotency-Key per request (a payment
-- create), so the idempotency layer claims, forwards and stores each one.
local counter = 0
-- A fresh prefix per wrk run (warm-up and measured runs hit the same backstop process).
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))

request = function()
  counter = counter + 1
  return wrk.format("POST", "/bench", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. counter,
  }, '{"amount":1000,"currency":"EUR"}')
end
