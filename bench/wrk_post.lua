-- wrk script for bench/bench_responses.py: POST recorded JSON bodies, cycling through them, and
-- count every answer that is not a replay hit.
--
--   wrk -t1 -c8 -d4s -s bench/wrk_post.lua http://127.0.0.1:PORT/v1/responses -- BODIES_FILE [API_KEY]
--
-- BODIES_FILE (or the WRK_BODIES environment variable) holds one request body per line, exactly
-- the bytes that were recorded (compact JSON has no raw newline). The request path is the URL's.
-- Each answer must be a 200 carrying `seedtape-status: hit`; the others are counted, and done()
-- prints one line starting with "WRK_RESULT " and a JSON object for the benchmark to parse.
-- Latencies are wrk's own histogram, in microseconds.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local requests = {}
local next_index = 1

function init(args)
  local path = args[1] or os.getenv("WRK_BODIES")
  if not path or path == "" then
    error("wrk_post.lua: pass the bodies file after `--` or in WRK_BODIES")
  end
  local key = args[2] or os.getenv("WRK_API_KEY") or "sk-bench"
  local headers = {
    ["content-type"] = "application/json",
    ["authorization"] = "Bearer " .. key,
  }
  local file = assert(io.open(path, "rb"))
  for line in file:lines() do
    if #line > 0 then
      -- wrk.format adds content-length; a nil path means the URL's path
      table.insert(requests, wrk.format("POST", nil, headers, line))
    end
  end
  file:close()
  if #requests == 0 then
    error("wrk_post.lua: no bodies in " .. path)
  end
  -- globals, read back by done() through thread:get()
  answers, non200, nohit, first_bad = 0, 0, 0, ""
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function response(status, headers, body)
  answers = answers + 1
  if status ~= 200 then
    non200 = non200 + 1
    if first_bad == "" then first_bad = "HTTP " .. status .. " " .. string.sub(body or "", 1, 200) end
  else
    local hit = headers["seedtape-status"] or headers["Seedtape-Status"]
    if hit ~= "hit" then
      nohit = nohit + 1
      if first_bad == "" then first_bad = "200 with seedtape-status " .. tostring(hit) end
    end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, _)
  local answered, bad, missed, first = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    answered = answered + (t:get("answers") or 0)
    bad = bad + (t:get("non200") or 0)
    missed = missed + (t:get("nohit") or 0)
    if first == "" then first = t:get("first_bad") or "" end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "answers": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "non200": %d, "nohit": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "first_bad": %s}\n',
    summary.requests, answered, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, bad, missed, e.connect, e.read, e.write, e.status,
    e.timeout, json_string(first)))
end
