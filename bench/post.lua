-- Throughput: POST the same body as fast as wrk can.
--   wrk -s bench/post.lua URL -- BODY_FILE API_KEY
-- The request is built once in init(), so wrk sends it without calling Lua per request.
function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-API-Key"] = args[2]
end
