-- Latency at a set rate: POST the same body, each connection pausing between requests.
--   wrk -s bench/paced.lua URL -- BODY_FILE API_KEY PAUSE_MS
-- With C connections the rate is about C / (PAUSE + latency); run.py reports the rate reached.
-- Kept apart from post.lua on purpose: defining delay() at all makes wrk call Lua per request.
-- The request itself is post.lua's.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "post.lua")
local post_init = init

function init(args)
  post_init(args)
  pause = tonumber(args[3])
end

function delay()
  return pause
end
