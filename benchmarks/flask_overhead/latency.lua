-- wrk script: at the end of a run, print one line that run.py parses:
--   PTBENCH {"requests":..., "duration_us":..., "errors":{...}, "latency_us":{...},
--            "percentiles":[[p, us], ...]}
-- The percentile curve runs from 50% to 99.99% evenly on a log scale of
-- 1/(1-p) (HdrHistogram style), plus the usual named points. wrk records
-- latency in microseconds (HdrHistogram, 3 significant digits).

local POINTS = 40

local function fmt(x)
  return string.format("%.6g", x)
end

done = function(summary, latency, requests)
  local curve = {}
  local lo = math.log10(2)     -- p = 50%
  local hi = 4                 -- p = 99.99%
  for i = 0, POINTS do
    local x = lo + (hi - lo) * i / POINTS
    local p = 100 * (1 - 10 ^ (-x))
    curve[#curve + 1] = "[" .. fmt(p) .. "," .. fmt(latency:percentile(p)) .. "]"
  end
  local named = {}
  for _, p in ipairs({ 50, 75, 90, 99, 99.9, 99.99 }) do
    named[#named + 1] = "\"" .. fmt(p) .. "\":" .. fmt(latency:percentile(p))
  end
  local e = summary.errors
  io.write("PTBENCH {")
  io.write("\"requests\":" .. summary.requests)
  io.write(",\"duration_us\":" .. summary.duration)
  io.write(",\"bytes\":" .. summary.bytes)
  io.write(string.format(
    ",\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}",
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write(",\"latency_us\":{\"min\":" .. fmt(latency.min) .. ",\"max\":" .. fmt(latency.max)
    .. ",\"mean\":" .. fmt(latency.mean) .. ",\"stdev\":" .. fmt(latency.stdev) .. "}")
  io.write(",\"named\":{" .. table.concat(named, ",") .. "}")
  io.write(",\"percentiles\":[" .. table.concat(curve, ",") .. "]")
  io.write("}\n")
end
