-- End to end: get exactly N 202s per wrk thread, then stop.
--   wrk -s bench/exact.lua URL -- BODY_FILE API_KEY N
-- A refused POST (503, 429, ...) is sent again. Once a thread's outstanding
-- POSTs would complete its N it sends only GET /healthz, which carries no
-- records, until they are answered; so no record is in flight when it stops
-- and "accepted" is exact.
-- A POST whose connection closes unanswered (a worker killed or timed out)
-- gets no response() call: after QUIET seconds with no POST answered, the
-- outstanding ones count as dropped and are sent again (the caller reports
-- how many). A late answer to one of them is still counted, and un-drops it.
-- wrk itself only stops at -d (its main thread sleeps), so each thread prints
-- a DONE line and the caller interrupts wrk once every thread has.

local QUIET = 5

-- wrk calls request() once on its first thread before connecting, to see
-- whether the script pipelines; that call must not count as a POST sent.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("probing_call_due", threads == 1)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  post = wrk.format("POST", nil, {["Content-Type"] = "application/json", ["X-API-Key"] = args[2]}, body)
  probe = wrk.format("GET", "/healthz", {})
  quota, accepted, refused, dropped, inflight, finished = tonumber(args[3]), 0, 0, 0, 0, false
  last_answer = os.time()
end

function request()
  if probing_call_due then
    probing_call_due = false
    return post
  end
  if accepted + inflight < quota then
    inflight = inflight + 1
    return post
  end
  if os.time() - last_answer >= QUIET and inflight > 0 then
    dropped, inflight, last_answer = dropped + inflight, 0, os.time()
    return request()
  end
  return probe
end

function response(status, headers, body)
  if status ~= 200 then  -- a POST's answer; a probe's is 200, a POST's never
    last_answer = os.time()
    if inflight > 0 then inflight = inflight - 1 else dropped = dropped - 1 end
    if status == 202 then accepted = accepted + 1 else refused = refused + 1 end
  end
  if accepted >= quota and inflight == 0 and not finished then
    finished = true
    io.write(string.format("DONE accepted=%d refused=%d dropped=%d\n", accepted, refused, dropped))
    io.flush()
    wrk.thread:stop()
  end
end
