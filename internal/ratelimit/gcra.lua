-- Two GCRA buckets of one principal, checked together: a call is allowed
-- only when both allow it, and only then is it taken from both. A refused
-- call changes nothing.
--
-- KEYS[1], KEYS[2]: the minute and hour buckets' theoretical arrival times
--                    (TAT), in microseconds since the Unix epoch.
-- ARGV[1], ARGV[2]: calls allowed per minute and per hour (0 = no limit);
--                    a limit of n holds n calls and refills one every
--                    period/n.
-- ARGV[3]:          now in microseconds since the epoch, or "" for Redis's
--                    clock (the default: one clock for every sidecar).
--
-- Returns {1} when allowed, else {0, retry_after_us, "minute"|"hour"}: the
-- longer wait when both refuse, so the retry is allowed by both.
local now
if ARGV[3] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end

local buckets = {
  {key = KEYS[1], n = tonumber(ARGV[1]), period = 60000000, name = "minute"},
  {key = KEYS[2], n = tonumber(ARGV[2]), period = 3600000000, name = "hour"},
}

local wait, refused = 0, nil
for _, b in ipairs(buckets) do
  if b.n > 0 then
    local interval = b.period / b.n
    local tat = tonumber(redis.call("GET", b.key)) or now
    if tat < now then
      tat = now
    end
    local new_tat = tat + interval
    -- Allowed while the new TAT is at most a full bucket ahead of now.
    local over = new_tat - now - b.period
    if over > 0 then
      if over > wait then
        wait, refused = over, b.name
      end
    else
      b.new_tat = new_tat
    end
  end
end

if refused then
  return {0, math.ceil(wait), refused}
end

for _, b in ipairs(buckets) do
  if b.new_tat then
    local ttl_ms = math.ceil((b.new_tat - now) / 1000)
    redis.call("SET", b.key, string.format("%.0f", b.new_tat), "PX", ttl_ms)
  end
end
return {1}
