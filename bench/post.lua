-- wrk script: POST the file named by $BENCH_BODY as a JSON chat request,
-- and print a machine-readable summary line (parsed by bench/run.sh).
--
--   BENCH_BODY=body.json wrk -t1 -c32 -d8s --latency -s bench/post.lua URL

local path = os.getenv("BENCH_BODY")
if path == nil or path == "" then
    error("BENCH_BODY is not set")
end

local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d"
        .. " max_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, summary.duration, summary.bytes,
        latency:percentile(50), latency:percentile(99), latency.max,
        e.connect, e.read, e.write, e.status, e.timeout))
end
