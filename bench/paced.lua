-- Latency at a set rate: POST the same body, each connection pausing between requests.
--   wrk -s bench/paced.lua URL -- BODY_FILE API_KEY PAUSE_MS
-- With C connections the rate is about C / (PAUSE + latency); run.py reports the rate reached.
-- Kept apart from post.lua on purpose: defining delay() at all makes wrk call Lua per request.
function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-API-Key"] = args[2]
  pause = tonumber(args[3])
end

function delay()
  return pause
end
