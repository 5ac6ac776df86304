-- wrk script for scripts/bench-http.sh. Arguments (after `--`):
--   get                                   plain GET of the URL's path
--   post <product> <license_id> fixed     the same ~300 B register-style body every time
--   post <product> <license_id> unique    the same body with a user unique to this run
--   consume <product> <license_id>        an add_consumption body of 1
-- `done` prints one machine-readable RESULT line (requests/s, p50/p99, errors); non-2xx
-- answers are counted so a run full of refusals can never pass as fast.

local threads = {}
local mode, product, license_id, users
local counter = 0
-- `tid` is a global each thread gets from setup() (thread:set), so it is not declared here.
local run = tostring(os.time())

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function body(user)
  -- Shaped like what the SDKs send to /register: ~300 bytes.
  return string.format(
    '{"product":"%s","license_id":%s,"user":"%s","os_hostname":"bench-host-0001.example.internal",' ..
      '"ip_local":"192.168.100.200","user_info":"keyfloat benchmark client, sized like an SDK request",' ..
      '"app_ver":"1.2.3","hardware_id":"3f6c2a9d0b7e4c5f8a1d2e3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f"}',
    product, license_id, user)
end

function init(args)
  mode, product, license_id, users = args[1] or "get", args[2], args[3], args[4]
  wrk.headers["Content-Type"] = "application/json"
  if mode == "post" and users == "fixed" then
    wrk.method = "POST"
    wrk.body = body("bench-user")
  elseif mode == "consume" then
    wrk.method = "POST"
    wrk.body = string.format('{"product":"%s","license_id":%s,"consumptions":1,"user":"bench-user"}',
      product, license_id)
  elseif mode == "post" then
    wrk.method = "POST"
  end
end

function request()
  if mode == "post" and users == "unique" then
    counter = counter + 1
    return wrk.format("POST", nil, nil, body(string.format("u-%s-%d-%d", run, tid or 0, counter)))
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.2f rps=%.0f p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
