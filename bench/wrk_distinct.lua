-- wrk script for bench/bench_record.py: POST a chat completion with a prompt never sent before on
-- every request, so that a recording proxy records every one of them.
--
--   wrk -t1 -c16 -d5s -s bench/wrk_distinct.lua http://127.0.0.1:PORT/v1/chat/completions -- TAG EXPECT [API_KEY]
--
-- TAG makes the prompts of one run distinct from every other run's (the bench passes a fresh one per
-- run); each prompt also carries the wrk thread's number and a per-thread counter. EXPECT is the
-- `seedtape-status` every answer must carry ("recorded" through seedtape in auto mode, "-" for none:
-- a plain proxy). Answers that are not a 200 or carry another status are counted as errors; every
-- status seen is counted too. done() prints one line starting with "WRK_RESULT " and a JSON object
-- (the fields of bench/wrk_post.lua's line, plus "statuses" and "ok"). Latencies are wrk's own
-- histogram, in microseconds.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

local headers, tag, expect
local counter = 0

function init(args)
  tag = args[1] or error("wrk_distinct.lua: pass TAG EXPECT [API_KEY] after `--`")
  expect = args[2] or error("wrk_distinct.lua: pass TAG EXPECT [API_KEY] after `--`")
  headers = {
    ["content-type"] = "application/json",
    ["authorization"] = "Bearer " .. (args[3] or "sk-bench"),
  }
  -- globals, read back by done() through thread:get()
  answers, ok, non200, nohit, first_bad, statuses = 0, 0, 0, 0, "", {}
end

function request()
  counter = counter + 1
  -- compact JSON, as the openai SDK sends it; tag is [A-Za-z0-9-] only, so no escaping is needed
  local body = string.format(
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Recording %s-%d-%d: say something."}]}',
    tag, thread_id, counter)
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
  answers = answers + 1
  local st = hdrs["seedtape-status"] or hdrs["Seedtape-Status"] or "-"
  statuses[st] = (statuses[st] or 0) + 1
  if status ~= 200 then
    non200 = non200 + 1
    if first_bad == "" then first_bad = "HTTP " .. status .. " " .. string.sub(body or "", 1, 200) end
  elseif st ~= expect then
    nohit = nohit + 1
    if first_bad == "" then first_bad = "200 with seedtape-status " .. st .. ", expected " .. expect end
  else
    ok = ok + 1
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
  local answered, good, bad, missed, first, seen = 0, 0, 0, 0, "", {}
  for _, t in ipairs(threads) do
    answered = answered + (t:get("answers") or 0)
    good = good + (t:get("ok") or 0)
    bad = bad + (t:get("non200") or 0)
    missed = missed + (t:get("nohit") or 0)
    if first == "" then first = t:get("first_bad") or "" end
    for k, v in pairs(t:get("statuses") or {}) do
      seen[k] = (seen[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(seen) do
    table.insert(parts, json_string(k) .. ": " .. v)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "answers": %d, "ok": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "non200": %d, "nohit": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "first_bad": %s, "statuses": {%s}}\n',
    summary.requests, answered, good, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, bad, missed, e.connect, e.read, e.write, e.status,
    e.timeout, json_string(first), table.concat(parts, ", ")))
end
