-- Applies one round of the ingester (the merged updates of several topic partitions) to the
-- online store, atomically with those partitions' applied-offset watermarks (see writer.rs).
-- Redis runs a script to completion before any other command, so either all of the round and
-- the new watermarks are visible, or none of it.
--
-- KEYS[1]        the offsets hash
-- KEYS[2..]      entity hashes: counter updates first, then attribute updates
-- ARGV[1]        number of partitions P, then P x (offsets field, expected watermark ('' =
--                none), next watermark)
-- then           TTL (ms), number of counter updates, number of attribute updates
-- then per counter update:   one binary argument, little-endian: seen_ms (f64), n (u32), then
--                            n x (finest bucket index, impressions, clicks) (u32 each), the
--                            buckets ascending (numbers as text cost Redis a strtod each)
-- then per attribute update: event_ms, created (0|1), n, n x (field, value)
-- Returns {1} when applied; {0, position, current, …} listing the partitions (0-based) whose
-- stored watermark is not the expected one, in which case nothing is applied.

local partitions = tonumber(ARGV[1])
local fenced = {0}
for i = 0, partitions - 1 do
  local current = redis.call('HGET', KEYS[1], ARGV[2 + 3 * i])
  if (current or '') ~= ARGV[3 + 3 * i] then
    fenced[#fenced + 1] = i
    fenced[#fenced + 1] = current or ''
  end
end
if #fenced > 1 then
  return fenced
end

local a = 2 + 3 * partitions
local ttl = tonumber(ARGV[a])
local counters, attributes = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
a = a + 3
-- {window bucket in finest buckets, buckets in the ring, hash field}
local windows = {__WINDOWS__}
local fields, formats = {}, {}
-- What a counter update reads: seen_ms, the rings, expires_ms.
local reads = {'seen_ms'}
for w = 1, #windows do
  fields[w] = windows[w][3]
  formats[w] = '<' .. string.rep('I4', 1 + 2 * windows[w][2])
  reads[1 + w] = fields[w]
end
reads[#reads + 1] = 'expires_ms'

-- Redis deletes an entity TTL to TTL + TTL/8 after its last write (wall clock): reads apply the
-- TTL themselves, in event time, so this is only the garbage collection of inactive entities.
-- Setting the deadline with a slack, and only when less than the TTL is left, spares nearly every
-- write a PEXPIREAT call (a third of the calls a counter update makes); `expires_ms` remembers it.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- As text: Redis would format a Lua number with an exponent.
local deadline = string.format('%.0f', now + ttl + math.floor(ttl / 8))

-- Adds `expires_ms` to an HSET's field list when the held deadline (or its absence) is too near.
local function expiring(held, set)
  if held == false or tonumber(held) < now + ttl then
    set[#set + 1] = 'expires_ms'
    set[#set + 1] = deadline
    return true
  end
  return false
end

-- One counter update's argument as {seen_ms, n, bucket, impressions, clicks, …}, a bucket at a
-- time: one unpack of them all would overflow Lua's stack for an entity with thousands of
-- buckets in one round (a backfill).
local function counts_of(blob)
  local seen, n, at = struct.unpack('<dI4', blob)
  local u = {seen, n}
  for k = 1, n do
    u[3 * k], u[3 * k + 1], u[3 * k + 2], at = struct.unpack('<I4I4I4', blob, at)
  end
  return u
end

local function newer(value, stored)
  return stored == false or tonumber(value) > tonumber(stored)
end

-- One slot's counts, added to in place: the ring as a string, with slot `s` (0-based) replaced.
local function add(ring, s, impressions, clicks)
  local at = 5 + 8 * s
  local i, c = struct.unpack('<I4I4', ring, at)
  return string.sub(ring, 1, at - 1) .. struct.pack('<I4I4', i + impressions, c + clicks) .. string.sub(ring, at + 8)
end

for i = 1, counters do
  local key = KEYS[1 + i]
  local u = counts_of(ARGV[a])
  a = a + 1
  local seen, last_at = u[1], 3 * u[2]
  local held = redis.call('HMGET', key, unpack(reads))
  local set = {}
  for w = 1, #windows do
    local width, size = windows[w][1], windows[w][2]
    local value = held[1 + w]
    if not (value and #value == 4 + 8 * size) then
      value = false
    end
    -- The events' buckets come in ascending order: the last is the newest.
    local last = math.floor(u[last_at] / width)
    local newest = value and struct.unpack('<I4', value)
    if value and last <= newest then
      -- The common case: the ring does not move, only the events' slots change.
      for e = 3, last_at, 3 do
        local bucket = math.floor(u[e] / width)
        -- An event older than the ring's oldest bucket has left the window: it no longer counts.
        if bucket > newest - size then
          value = add(value, bucket % size, u[e + 1], u[e + 2])
        end
      end
    else
      -- The ring moves forward (or starts): as a table, [1] the newest bucket, then
      -- impressions and clicks per slot.
      local ring
      if value then
        ring = {struct.unpack(formats[w], value)}
        ring[2 + 2 * size] = nil -- struct.unpack also returns the next position
      else
        ring = {last}
        for k = 2, 1 + 2 * size do ring[k] = 0 end
        newest = last
      end
      -- Slots of the buckets passed over start empty.
      for b = newest + 1, math.min(last, newest + size) do
        local s = b % size
        ring[2 + 2 * s], ring[3 + 2 * s] = 0, 0
      end
      ring[1] = last
      for e = 3, last_at, 3 do
        local bucket = math.floor(u[e] / width)
        if bucket > last - size then
          local s = bucket % size
          ring[2 + 2 * s] = ring[2 + 2 * s] + u[e + 1]
          ring[3 + 2 * s] = ring[3 + 2 * s] + u[e + 2]
        end
      end
      value = struct.pack(formats[w], unpack(ring))
    end
    set[#set + 1] = fields[w]
    set[#set + 1] = value
  end
  if newer(seen, held[1]) then
    set[#set + 1] = 'seen_ms'
    set[#set + 1] = string.format('%.0f', seen)
  end
  local expire = expiring(held[#reads], set)
  redis.call('HSET', key, unpack(set))
  if expire then
    redis.call('PEXPIREAT', key, deadline)
  end
end

for i = 1, attributes do
  local key = KEYS[1 + counters + i]
  local t, created, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local held = redis.call('HMGET', key, 'updated_ms', 'seen_ms', 'expires_ms')
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
  local set = {}
  if newer(t, held[2]) then
    set[1], set[2] = 'seen_ms', t
  end
  local expire = expiring(held[3], set)
  if #set > 0 then
    redis.call('HSET', key, unpack(set))
  end
  if expire then
    redis.call('PEXPIREAT', key, deadline)
  end
end

local marks = {}
for i = 0, partitions - 1 do
  marks[#marks + 1] = ARGV[2 + 3 * i]
  marks[#marks + 1] = ARGV[4 + 3 * i]
end
redis.call('HSET', KEYS[1], unpack(marks))
return {1}
