-- Applies one round of the ingester (the merged updates of several topic partitions) to the
-- online store, atomically with those partitions' applied-offset watermarks (see writer.rs).
-- Redis runs a script to completion before any other command, so either all of the round and
-- the new watermarks are visible, or none of it. Each entity is one record, a string whose
-- layout is in layout.rs: this script reads and writes its header and rings, and replaces its
-- attributes whole with what the writer encoded.
--
-- KEYS[1]        the offsets hash
-- KEYS[2..]      entity records: counter updates first, then attribute updates; then one
--                click-id mark per click; then the history hash of each pair update (a user's
--                pairs are fields of one hash, each field a record of counters only)
-- ARGV[1]        number of partitions P, then P x (offsets field, expected watermark ('' =
--                none), next watermark)
-- then           TTL (ms), number of counter updates, number of attribute updates, number of
--                clicks, how long a click-id mark lasts (ms), number of pair updates
-- then per counter update:   one binary argument, little-endian: seen_ms (f64), n (u32), then
--                            n x (finest bucket index, impressions, clicks) (u32 each), the
--                            buckets ascending (numbers as text cost Redis a strtod each)
-- then per attribute update: event_ms, created (0|1), the encoded attributes
-- then per click:            one binary argument, little-endian u32s: its bucket, then the
--                            positions (1-based) of its counter updates: its user's, ad's and
--                            advertiser's, then its pairs' (numbered after the counter updates:
--                            pair update i is counters + i)
-- then per pair update:      the field, then its counts as a counter update's
-- Every click is in its entities' counter updates already; one whose click id is marked (a
-- retry) is taken back out of them, the others are marked.
-- Returns {1, retried clicks} when applied; {0, position, current, …} listing the partitions
-- (0-based) whose stored watermark is not the expected one, in which case nothing is applied. A
-- key that holds something other than a record of this layout is an error, also before anything
-- is written.

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
local clicks, click_ttl = tonumber(ARGV[a + 3]), ARGV[a + 4]
local pair_updates = tonumber(ARGV[a + 5])
a = a + 6
local entity_keys = 1 + counters + attributes
-- Where the pair updates' keys and arguments start.
local pair_keys = entity_keys + clicks
local pair_args = a + counters + 3 * attributes + clicks

local FORMAT = __FORMAT__
local HAS_SEEN, HAS_CREATED, HAS_UPDATED, HAS_EXPIRES = __FLAGS__
local HEADER = __HEADER__
-- {window bucket in finest buckets, buckets in the ring}
local windows = {__WINDOWS__}
local formats, empty, lengths = {}, {}, {}
local rings_end = HEADER
for w = 1, #windows do
  local size = windows[w][2]
  formats[w] = '<' .. string.rep('I4', 1 + 2 * size)
  lengths[w] = 4 + 8 * size
  empty[w] = string.rep('\0', lengths[w])
  rings_end = rings_end + lengths[w]
end
-- Numbers given to redis.call are formatted with printf: these are given as text, made once.
local header_last = tostring(rings_end - 1)

-- Every entity of the round, read once and checked before anything is written (a script that
-- fails midway keeps the writes it made), then held decoded until the end, where each is
-- written once however many updates it had. Only the header and rings are read: the
-- attributes are replaced whole or left where they are.
-- A record's header and rings, decoded; nil and why when `held` is not a record of this layout.
local function decode(held)
  if #held < rings_end or string.byte(held, 1) ~= FORMAT then
    return nil, #held .. ' bytes of format ' .. tostring(string.byte(held, 1)) .. ', not a record of format ' .. FORMAT .. ' (another layout)'
  end
  -- One table per entity: its rings at [1..], the header by name.
  local flags, seen, created, updated, expires = struct.unpack('<xBdddd', held)
  local e = {flags = flags, seen = seen, created = created, updated = updated, expires = expires}
  local at = HEADER + 1
  for w = 1, #windows do
    e[w] = string.sub(held, at, at + lengths[w] - 1)
    at = at + lengths[w]
  end
  return e
end

local function fresh()
  local e = {flags = 0, seen = 0, created = 0, updated = 0, expires = 0, new = true}
  for w = 1, #windows do e[w] = empty[w] end
  return e
end

local entities, order = {}, {}
for i = 2, entity_keys do
  local key = KEYS[i]
  if entities[key] == nil then
    -- '' when the key does not exist: a record is never empty.
    local held = redis.pcall('GETRANGE', key, '0', header_last)
    if type(held) == 'table' and held.err then
      return redis.error_reply('entity ' .. key .. ' is not an online-store record: ' .. held.err)
    end
    local e = fresh()
    if held ~= '' then
      local why
      e, why = decode(held)
      if e == nil then
        return redis.error_reply('entity ' .. key .. ' holds ' .. why)
      end
    end
    entities[key] = e
    order[#order + 1] = key
  end
end

-- The pairs: each field read whole (it is header and rings only), checked like the records.
local paired = {}
for i = 1, pair_updates do
  local key, field = KEYS[pair_keys + i], ARGV[pair_args + 2 * (i - 1)]
  local held = redis.pcall('HGET', key, field)
  if type(held) == 'table' and held.err then
    return redis.error_reply('history ' .. key .. ' is not an online-store hash: ' .. held.err)
  end
  local e = fresh()
  if held then
    local why
    e, why = decode(held)
    if e == nil then
      return redis.error_reply('history ' .. key .. ' field ' .. field .. ' holds ' .. why)
    end
  end
  paired[i] = e
end

local function has(e, flag)
  return bit.band(e.flags, flag) ~= 0
end

-- The newest event time that touched the entity.
local function saw(e, t)
  if not has(e, HAS_SEEN) or t > e.seen then
    e.seen = t
    e.flags = bit.bor(e.flags, HAS_SEEN)
  end
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

-- One slot's counts, added to in place: the ring as a string, with slot `s` (0-based) replaced.
local function add(ring, s, impressions, clicks)
  local at = 5 + 8 * s
  local i, c = struct.unpack('<I4I4', ring, at)
  return string.sub(ring, 1, at - 1) .. struct.pack('<I4I4', i + impressions, c + clicks) .. string.sub(ring, at + 8)
end

-- Retried clicks, per counter update and bucket: {[update] = {[bucket] = clicks}}. Marked
-- only now, every record having been checked (a script that fails keeps its writes).
local retried, retries = {}, 0
local c = a + counters + 3 * attributes
for i = 1, clicks do
  if not redis.call('SET', KEYS[entity_keys + i], '1', 'NX', 'PX', click_ttl) then
    retries = retries + 1
    local blob = ARGV[c + i - 1]
    local bucket = struct.unpack('<I4', blob)
    for at = 5, #blob, 4 do
      local update = struct.unpack('<I4', blob, at)
      local r = retried[update] or {}
      r[bucket] = (r[bucket] or 0) + 1
      retried[update] = r
    end
  end
end

-- Adds counter update `u` to entity `e`'s rings, less the retried clicks `r` ({[bucket] =
-- clicks}, or nil).
local function count(e, u, r)
  if r then
    for k = 3, 3 * u[2], 3 do
      u[k + 2] = u[k + 2] - (r[u[k]] or 0)
    end
  end
  local last_at = 3 * u[2]
  for w = 1, #windows do
    local width, size = windows[w][1], windows[w][2]
    local value = e[w]
    -- The events' buckets come in ascending order: the last is the newest.
    local last = math.floor(u[last_at] / width)
    local newest = struct.unpack('<I4', value)
    -- An all-zero ring (a new entity, or one known only from its attributes) holds nothing
    -- to keep: it starts at the events' newest bucket.
    if value == empty[w] then
      newest = last
      value = struct.pack('<I4', last) .. string.sub(value, 5)
    end
    if last <= newest then
      -- The common case: the ring does not move, only the events' slots change.
      for k = 3, last_at, 3 do
        local bucket = math.floor(u[k] / width)
        -- An event older than the ring's oldest bucket has left the window: it no longer counts.
        if bucket > newest - size then
          value = add(value, bucket % size, u[k + 1], u[k + 2])
        end
      end
    else
      -- The ring moves forward: as a table, [1] the newest bucket, then impressions and
      -- clicks per slot.
      local ring = {struct.unpack(formats[w], value)}
      ring[2 + 2 * size] = nil -- struct.unpack also returns the next position
      -- Slots of the buckets passed over start empty.
      for b = newest + 1, math.min(last, newest + size) do
        local s = b % size
        ring[2 + 2 * s], ring[3 + 2 * s] = 0, 0
      end
      ring[1] = last
      for k = 3, last_at, 3 do
        local bucket = math.floor(u[k] / width)
        if bucket > last - size then
          local s = bucket % size
          ring[2 + 2 * s] = ring[2 + 2 * s] + u[k + 1]
          ring[3 + 2 * s] = ring[3 + 2 * s] + u[k + 2]
        end
      end
      value = struct.pack(formats[w], unpack(ring))
    end
    e[w] = value
  end
  saw(e, u[1])
end

for i = 1, counters do
  count(entities[KEYS[1 + i]], counts_of(ARGV[a]), retried[i])
  a = a + 1
end
for i = 1, pair_updates do
  count(paired[i], counts_of(ARGV[pair_args + 2 * (i - 1) + 1]), retried[counters + i])
end

for i = 1, attributes do
  local e = entities[KEYS[1 + counters + i]]
  local t, created = tonumber(ARGV[a]), ARGV[a + 1]
  -- A snapshot replaces the attributes only when it is at least as new as the one held, so a
  -- replayed or late record cannot bring an old value back.
  if not has(e, HAS_UPDATED) or t >= e.updated then
    e.attributes = ARGV[a + 2]
    e.updated = t
    e.flags = bit.bor(e.flags, HAS_UPDATED)
  end
  if created == '1' and not has(e, HAS_CREATED) then
    e.created = t
    e.flags = bit.bor(e.flags, HAS_CREATED)
  end
  saw(e, t)
  a = a + 3
end

-- Redis deletes an entity TTL to TTL + TTL/8 after its last write (wall clock): reads apply the
-- TTL themselves, in event time, so this is only the garbage collection of inactive entities.
-- A record's deadline moves (SET … PXAT) only when less than the TTL is left; otherwise the
-- write keeps the key's expiry (KEEPTTL).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local deadline = now + ttl + math.floor(ttl / 8)
-- As text: Redis would format a Lua number with an exponent.
local deadline_text = string.format('%.0f', deadline)
for _, key in ipairs(order) do
  local e = entities[key]
  local moves = not has(e, HAS_EXPIRES) or e.expires < now + ttl
  if moves then
    e.expires = deadline
    e.flags = bit.bor(e.flags, HAS_EXPIRES)
  end
  local head = struct.pack('<BBdddd', FORMAT, e.flags, e.seen, e.created, e.updated, e.expires) .. __RINGS__
  if e.attributes or e.new then
    -- A new record, or new attributes: the whole record (a new one always gets a deadline).
    if moves then
      redis.call('SET', key, head .. (e.attributes or ''), 'PXAT', deadline_text)
    else
      redis.call('SET', key, head .. e.attributes, 'KEEPTTL')
    end
  else
    -- Counters and times only: rewritten in place, the attributes and the expiry kept.
    redis.call('SETRANGE', key, '0', head)
    if moves then
      redis.call('PEXPIREAT', key, deadline_text)
    end
  end
end

-- Each pair's field whole (header and rings), and each history hash's deadline once.
local histories = {}
for i = 1, pair_updates do
  local key, e = KEYS[pair_keys + i], paired[i]
  local head = struct.pack('<BBdddd', FORMAT, e.flags, e.seen, e.created, e.updated, e.expires)
  redis.call('HSET', key, ARGV[pair_args + 2 * (i - 1)], head .. __RINGS__)
  if not histories[key] then
    histories[key] = true
    redis.call('PEXPIREAT', key, deadline_text)
  end
end

local marks = {}
for i = 0, partitions - 1 do
  marks[#marks + 1] = ARGV[2 + 3 * i]
  marks[#marks + 1] = ARGV[4 + 3 * i]
end
redis.call('HSET', KEYS[1], unpack(marks))
return {1, retries}
