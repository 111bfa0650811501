-- Applies one topic partition's batch to the online store, atomically with the partition's
-- applied-offset watermark (see writer.rs). Redis runs a script to completion before any other
-- command, so either all of the batch and the new watermark are visible, or none of it.
--
-- KEYS[1]        the offsets hash
-- KEYS[2..]      entity hashes: counter updates first, then attribute updates
-- ARGV[1..6]     offsets field, expected watermark ('' = none), next watermark, TTL (ms),
--                number of counter updates, number of attribute updates
-- then per counter update:   seen_ms, n, n x (bucket start ms, impressions, clicks)
-- then per attribute update: event_ms, created (0|1), n, n x (field, value)
-- Returns {1, next watermark} when applied, {0, current watermark} when the expected watermark is not stored.

local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then
  return {0, current}
end

local ttl = ARGV[4]
local counters, attributes = tonumber(ARGV[5]), tonumber(ARGV[6])
local windows = {__WINDOWS__}
local words, bytes = __WORDS__, __BYTES__
local format = '<' .. string.rep('I4', words)
local a = 7

local function newer(value, stored)
  return stored == false or tonumber(value) > tonumber(stored)
end

for i = 1, counters do
  local key = KEYS[1 + i]
  local seen, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local held = redis.call('HMGET', key, 'counts', 'seen_ms')
  local w
  if held[1] and #held[1] == bytes then
    w = {struct.unpack(format, held[1])}
    w[words + 1] = nil
  else
    w = {}
    for k = 1, words do w[k] = 0 end
  end
  for _ = 1, n do
    local t, impressions, clicks = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    a = a + 3
    local base = 0
    for _, window in ipairs(windows) do
      local bucket = math.floor(t / window[1])
      local s = base + (bucket % window[2]) * 3
      if w[s + 1] == bucket then
        w[s + 2] = w[s + 2] + impressions
        w[s + 3] = w[s + 3] + clicks
      elseif w[s + 1] < bucket then
        -- The slot held an older bucket, which has left the window: reuse it.
        w[s + 1], w[s + 2], w[s + 3] = bucket, impressions, clicks
      end
      -- else: the event is older than the window the slot now covers; it no longer counts.
      base = base + window[2] * 3
    end
  end
  if newer(seen, held[2]) then
    redis.call('HSET', key, 'counts', struct.pack(format, unpack(w)), 'seen_ms', seen)
  else
    redis.call('HSET', key, 'counts', struct.pack(format, unpack(w)))
  end
  redis.call('PEXPIRE', key, ttl)
end

for i = 1, attributes do
  local key = KEYS[1 + counters + i]
  local t, created, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local held = redis.call('HMGET', key, 'updated_ms', 'seen_ms')
  -- A snapshot replaces the attributes only when it is at least as new as the one held, so a
  -- replayed or late record cannot bring an old value back.
  if held[1] == false or tonumber(t) >= tonumber(held[1]) then
    local keep = {}
    local set = {'updated_ms', t}
    for j = 0, n - 1 do
      local field = ARGV[a + 2 * j]
      keep[field] = true
      set[#set + 1] = field
      set[#set + 1] = ARGV[a + 2 * j + 1]
    end
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if string.sub(field, 1, 2) == 'a:' and not keep[field] then
        redis.call('HDEL', key, field)
      end
    end
    redis.call('HSET', key, unpack(set))
  end
  a = a + 2 * n
  if created == '1' then
    redis.call('HSETNX', key, 'created_ms', t)
  end
  if newer(t, held[2]) then
    redis.call('HSET', key, 'seen_ms', t)
  end
  redis.call('PEXPIRE', key, ttl)
end

redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3]}
