-- wrk script: GET paths read from the file named by the first script argument, in turn (one wrk
-- thread, so one shared cursor); prints a one-line JSON summary that million_bench.py parses.
local paths = {}
local cursor = 0

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  if #paths == 0 then error("no paths in " .. tostring(args[1])) end
end

request = function()
  cursor = cursor % #paths + 1
  return wrk.format("GET", paths[cursor])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON:{\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"p50_us\":%d,\"p90_us\":%d," ..
    "\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f,\"err_connect\":%d,\"err_read\":%d," ..
    "\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
