-- wrk script for bench/harness.py (one wrk thread, so one shared cursor).
-- Arguments: LINES_FILE [LIMIT]
--   LINES_FILE: one request per line, "METHOD<TAB>PATH" or "METHOD<TAB>PATH<TAB>JSON BODY", sent in
--               turn and cycled (a list longer than the run never repeats a line).
--   LIMIT:      if > 0, stop after LIMIT responses: the thread stops, a line "LIMIT" goes to stdout
--               and the harness interrupts wrk (SIGINT), so a count-bounded run ends at once.
--               With no LIMIT the run is bounded by wrk's -d, and no response() hook is installed.
-- Prints one "JSON:{...}" summary line; "counted_*" are measured with a monotonic clock between the
-- first request sent and the LIMIT-th response (or the last response of a time-bounded run).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } sg_bench_timespec;
int clock_gettime(int clk_id, sg_bench_timespec *tp);
]]
local ts = ffi.new("sg_bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local reqs = {}
local cursor = 0
limit = 0
n_resp = 0
n_non2xx = 0
t_first = 0
t_last = 0
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      local method, path, body = line:match("^(%u+)\t([^\t]+)\t?(.*)$")
      if method == nil then error("bad line: " .. line) end
      local headers = {}
      if body ~= nil and #body > 0 then
        headers["Content-Type"] = "application/json"
      else
        body = nil
      end
      reqs[#reqs + 1] = wrk.format(method, path, headers, body)
    end
  end
  if #reqs == 0 then error("no requests in " .. tostring(args[1])) end
  limit = tonumber(args[2] or "0") or 0
  if limit <= 0 then
    response = nil -- wrk then skips handing headers and bodies to Lua: less load-generator CPU
  end
end

request = function()
  if t_first == 0 then t_first = now_us() end
  cursor = cursor % #reqs + 1
  return reqs[cursor]
end

response = function(status, headers, body)
  n_resp = n_resp + 1
  if status < 200 or status > 299 then n_non2xx = n_non2xx + 1 end
  t_last = now_us()
  if limit > 0 and n_resp == limit then
    wrk.thread:stop()
    io.write("LIMIT\n")
    io.stdout:flush()
  end
end

done = function(summary, latency, requests)
  local t = threads[1]
  local e = summary.errors
  io.write(string.format(
    "JSON:{\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"p50_us\":%d,\"p90_us\":%d," ..
    "\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f,\"err_connect\":%d,\"err_read\":%d," ..
    "\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d,\"counted\":%d,\"non2xx\":%d," ..
    "\"counted_us\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, t:get("n_resp"), t:get("n_non2xx"),
    t:get("t_last") - t:get("t_first")))
end
