-- wrk script: POST /embed with request bodies prepared by bench_http.sh
-- (one JSON body a line in the file named by BODIES), cycling through them.
-- Prints non-2xx answers and socket errors, so a run with errors is not
-- mistaken for speed.
local bodies = {}
local path = os.getenv("BODIES")
for line in io.lines(path) do
  bodies[#bodies + 1] = line
end
local next_body = 0

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/embed", {["Content-Type"] = "application/json"}, bodies[next_body])
end

done = function(summary, latency, requests)
  io.write(string.format("non2xx_or_errors %d\n", summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("latency_p50_ms %.3f\n", latency:percentile(50) / 1000))
  io.write(string.format("requests_per_s %.2f\n", summary.requests / (summary.duration / 1e6)))
end
