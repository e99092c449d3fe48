"""The Lua scripts of the Redis store (:mod:`tidings.store.redis`).

Each script is one atomic step on one hash slot: every key it names shares
one hash tag (a topic's ``{t:...}``, a user's ``{u:...}``, a notification's
``{n:...}``, an MQTT session bucket's ``{ms:...}``), except in single-Redis
mode, where the publish, notify and mark scripts also update the global
retained indexes, and TAG_SELECT reads users' tag sets by names it builds from
the tag index it walks (there is no slot rule on one server; on a cluster the
store selects another way). Time ("now", in
milliseconds) is always an argument from the store's clock, never Redis
``TIME``, so a fake clock drives expiry in tests.

Value encodings (msgpack objects concatenated; Python prepends an array
header and unpacks them in one call):

* history entry:  seq, ts, expires, kind, payload(bin)      (zset, score seq)
* retained:       offset, ts, kind, qos, payload(bin) [, meta (a map, as the
                  store's meta codec makes it: MQTT 5.0 properties)]
* inbox item:     seq, created, expires (-1: none), read, archived,
                  collapse key (false: none), fields JSON (bin)
* live message:   :mod:`tidings.redis_wire` (head .. offset, ts .. payload .. tail)
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "DELIVER",
    "DELIVER_MANY",
    "DUE_ADD",
    "DUE_CANCEL",
    "DUE_CLAIM",
    "DUE_DONE",
    "DUE_PUT",
    "DUE_SET",
    "DUE_TAKE",
    "FORGET_ENGAGEMENT",
    "HISTORY",
    "INBOX",
    "JOBS_PAGE",
    "JOB_CANCEL",
    "JOB_CLAIM",
    "JOB_COUNT",
    "JOB_CREATE",
    "JOB_FINISH",
    "JOB_PROGRESS",
    "JOB_REQUEUE",
    "MARK",
    "MQTT_DELETE",
    "MQTT_ENQUEUE",
    "MQTT_GET",
    "MQTT_SAVE",
    "NOTE",
    "NOTIFY",
    "PRESENCE_LIST",
    "PRESENCE_PUT",
    "PRESENCE_REMOVE",
    "PROFILE",
    "PRUNE",
    "PUBLISH",
    "RESERVE",
    "SWEEP",
    "TAGS",
    "TAG_HAS",
    "TAG_SELECT",
    "TRACK",
    "VARIANT_COUNT",
    "VARIANT_NOTE",
]

# Shared functions, prepended to the scripts that append to a topic.
_COMMON = r"""
-- msgpack bin header for n bytes (bin8 / bin16 / bin32), as Python's msgpack writes it
local function binhdr(n)
  if n < 256 then return '\196' .. string.char(n) end
  if n < 65536 then return '\197' .. string.char(math.floor(n / 256), n % 256) end
  return '\198' .. string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                               math.floor(n / 256) % 256, n % 256)
end

-- The topic's next offset; the history append and its trim (size, then expired
-- entries oldest first). A new topic takes the epoch it is given (derived by the
-- store, as latest() reports it before any publish); an old one keeps its own.
local function append(mk, hk, now, epoch, size, ttl, kind, payload)
  local seq
  local cur = redis.call('HGET', mk, 'e')
  if cur then
    epoch = cur
    seq = redis.call('HINCRBY', mk, 's', 1)
  else
    redis.call('HSET', mk, 'e', epoch, 's', 1)
    seq = 1
  end
  if size > 0 then
    redis.call('ZADD', hk, seq,
               cmsgpack.pack(seq, now, now + ttl, kind) .. binhdr(#payload) .. payload)
  end
  redis.call('ZREMRANGEBYSCORE', hk, '-inf', seq - size)
  for _ = 1, 100 do
    local first = redis.call('ZRANGE', hk, 0, 0)
    if #first == 0 then break end
    local _, _, _, expires = cmsgpack.unpack_limit(first[1], 3)
    if expires > now then break end
    redis.call('ZREMRANGEBYRANK', hk, 0, 0)
  end
  if size > 0 then redis.call('PEXPIRE', hk, ttl) end
  return seq, epoch
end

-- Set (non-empty payload) or clear the retained message; ik / lk: the index of
-- retained topics and the set of index names, when they live in this script.
local function retain(rk, offset, now, kind, qos, payload, ik, lk, topic, member, meta)
  if #payload > 0 then
    redis.call('SET', rk, cmsgpack.pack(offset, now, kind, qos) .. binhdr(#payload) .. payload
                          .. (meta or ''))
    if ik then redis.call('ZADD', ik, 0, topic) end
    if lk then redis.call('ZADD', lk, 0, member) end
  else
    redis.call('DEL', rk)
    if ik then redis.call('ZREM', ik, topic) end
  end
end

-- Put the publication on the topic's channel (1: PUBLISH, 2: SPUBLISH, 0: not at all).
local function announce(mode, channel, head, offset, ts, payload, tail)
  if mode == 0 then return end
  local msg = head .. cmsgpack.pack(offset, ts) .. binhdr(#payload) .. payload .. tail
  if mode == 2 then
    redis.call('SPUBLISH', channel, msg)
  else
    redis.call('PUBLISH', channel, msg)
  end
end
"""

RESERVE = r"""
-- KEYS: meta. ARGV: count, epoch (a new topic's). Returns {epoch, first sequence}.
local count = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'e')
if cur then
  return {cur, redis.call('HINCRBY', KEYS[1], 's', count) - count + 1}
end
redis.call('HSET', KEYS[1], 'e', ARGV[2], 's', count)
return {ARGV[2], 1}
"""

PUBLISH = _COMMON + r"""
-- KEYS: meta, history, retained, idempotency hash, idempotency expiry zset, channel
--       [, retained index [, index names]]
-- ARGV: now, epoch, size, ttl, kind, payload, retain, idempotency key ('' none),
--       idempotency ttl, announce mode, wire head, wire tail, topic, index member, qos,
--       retained meta (msgpacked map, '' none)
local now = tonumber(ARGV[1])
local key = ARGV[8]
if key ~= '' then
  local stale = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
  if #stale > 0 then
    redis.call('HDEL', KEYS[4], unpack(stale))
    redis.call('ZREM', KEYS[5], unpack(stale))
  end
  local expires = redis.call('ZSCORE', KEYS[5], key)
  if expires and tonumber(expires) > now then
    local first = redis.call('HGET', KEYS[4], key)
    local seq = tonumber(string.match(first, ':(%d+)$'))
    local found = redis.call('ZRANGEBYSCORE', KEYS[2], seq, seq)
    return {1, first, found[1] or false}
  end
end
local kind = tonumber(ARGV[5])
local payload = ARGV[6]
local seq, epoch = append(KEYS[1], KEYS[2], now, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
                          kind, payload)
local offset = epoch .. ':' .. seq
if ARGV[7] == '1' then
  retain(KEYS[3], offset, now, kind, tonumber(ARGV[15]), payload, KEYS[7], KEYS[8], ARGV[13],
         ARGV[14], ARGV[16])
end
if key ~= '' then
  local ttl = tonumber(ARGV[9])
  redis.call('HSET', KEYS[4], key, offset)
  redis.call('ZADD', KEYS[5], now + ttl, key)
  redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('PEXPIRE', KEYS[5], ttl)
end
announce(tonumber(ARGV[10]), KEYS[6], ARGV[11], offset, now, payload, ARGV[12])
return {0, offset}
"""

HISTORY = r"""
-- KEYS: meta, history.  ARGV: now, since epoch ('' and seq -1: the newest), since seq, limit
-- Returns {epoch or false, last seq, entries...}: the unexpired entries after 'since'
-- (oldest first, at most limit + 1; from the start when 'since' is of another
-- epoch), or the newest 'limit' (newest first).
local now = tonumber(ARGV[1])
local newest = ARGV[3] == '-1'
local limit = tonumber(ARGV[4])
local meta = redis.call('HMGET', KEYS[1], 'e', 's')
if not meta[1] then return {false, 0} end
local out = {meta[1], tonumber(meta[2])}
local after = '(0'
if ARGV[2] == meta[1] then after = '(' .. ARGV[3] end
local want = limit + 1
if newest then want = limit end
local got, skip, batch = 0, 0, want + 16
while got < want do
  local page
  if newest then
    page = redis.call('ZREVRANGE', KEYS[2], skip, skip + batch - 1)
  else
    page = redis.call('ZRANGEBYSCORE', KEYS[2], after, '+inf', 'LIMIT', skip, batch)
  end
  for _, entry in ipairs(page) do
    local _, _, _, expires = cmsgpack.unpack_limit(entry, 3)
    if expires > now then
      got = got + 1
      out[#out + 1] = entry
      if got >= want then break end
    end
  end
  if #page < batch then break end
  skip = skip + batch
end
return out
"""

PRUNE = r"""
-- KEYS: retained index, its last-seen hash.  ARGV: topic, cutoff
-- Drops an index entry not refreshed since 'cutoff' (its retained message was
-- found missing). Returns 1 if dropped.
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen and tonumber(seen) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# -- inbox ---------------------------------------------------------------------------------

# KEYS (notify and mark): 1 items, 2 order, 3 unread, 4 unread by seq, 5 expiry,
#   6 collapse index, 7 user meta, 8 stream meta, 9 stream history, 10 unread-topic
#   meta, 11 unread-topic history, 12 unread-topic retained, 13 the user's retained
#   index, 14 stream channel, 15 unread-topic channel, 16 read or archived items by seq
#   (pruned first when over the cap) [, 17 users with retained topics]
# ARGV: 1 now, 2 announce mode, 3 stream epoch, 4 stream size, 5 stream ttl, 6 stream
#   head, 7 stream tail, 8 unread-topic epoch, 9 unread head, 10 unread tail,
#   11 unread topic, 12 user id; then the script's own from 13.
_INBOX_COMMON = _COMMON + r"""
-- the index of users with retained topics (one Redis only); DELIVER moves it
local users_key = KEYS[17]

local function drop(nid, ck)
  redis.call('HDEL', KEYS[1], nid)
  redis.call('ZREM', KEYS[2], nid)
  redis.call('ZREM', KEYS[3], nid)
  redis.call('ZREM', KEYS[4], nid)
  redis.call('ZREM', KEYS[5], nid)
  redis.call('ZREM', KEYS[16], nid)
  if ck then redis.call('ZREM', KEYS[6], ck .. '\0' .. nid) end
end

-- an item's archived flag and collapse key (1, false when it is gone)
local function flags(nid)
  local entry = redis.call('HGET', KEYS[1], nid)
  if not entry then return 1, false end
  local _, _, _, _, _, ar, ck = cmsgpack.unpack_limit(entry, 6)
  return ar, ck
end

-- forget up to 100 expired items (reads skip the rest)
local function collect(now)
  local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
  for _, nid in ipairs(old) do
    local entry = redis.call('HGET', KEYS[1], nid)
    local ck = false
    if entry then
      local _, _, _, _, _, _, c = cmsgpack.unpack_limit(entry, 6)
      ck = c
    end
    drop(nid, ck)
  end
end

-- the stream append and the retained unread count, each on its channel
local function finish(now, count, payload)
  local mode = tonumber(ARGV[2])
  local sseq, sepoch = append(KEYS[8], KEYS[9], now, ARGV[3], tonumber(ARGV[4]),
                              tonumber(ARGV[5]), 0, payload)
  local soffset = sepoch .. ':' .. sseq
  announce(mode, KEYS[14], ARGV[6], soffset, now, payload, ARGV[7])
  local upayload = '{"count":' .. count .. '}'
  local useq, uepoch = append(KEYS[10], KEYS[11], now, ARGV[8], 0, 1000, 0, upayload)
  local uoffset = uepoch .. ':' .. useq
  retain(KEYS[12], uoffset, now, 0, 1, upayload, KEYS[13], users_key, ARGV[11], ARGV[12])
  announce(mode, KEYS[15], ARGV[9], uoffset, now, upayload, ARGV[10])
  return soffset, payload, uoffset, upayload
end

local function count_unread(now)
  return redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
end

-- Write one inbox item (as a notify does for one user): collapse, the cap, the
-- stream entry with 'unread' (and 'extra', raw JSON members after it) and the
-- retained count. 'silent': the stream (the user's events, then) gets a "silent"
-- event naming the item instead of the notification. Returns {count, stream
-- offset, push or event, unread offset, unread payload}.
local function write_item(now, nid, expires, ck, fields, base, cap, step, extra, silent)
  collect(now)
  local replaced = {}
  if ck then
    local members = redis.call('ZRANGEBYLEX', KEYS[6], '[' .. ck .. '\0', '[' .. ck .. '\0\255')
    for _, m in ipairs(members) do
      local id = string.sub(m, #ck + 2)
      local entry = redis.call('HGET', KEYS[1], id)
      if entry then
        local _, _, _, _, rd, ar, c = cmsgpack.unpack_limit(entry, 6)
        if c == ck and rd == 0 and ar == 0 then
          drop(id, c)
          replaced[#replaced + 1] = id
        end
      end
    end
  end
  local seq = redis.call('HINCRBY', KEYS[7], 'seq', 1)
  redis.call('HSET', KEYS[1], nid,
             cmsgpack.pack(seq, now, expires, 0, 0, ck) .. binhdr(#fields) .. fields)
  redis.call('ZADD', KEYS[2], seq, nid)
  if expires < 0 then
    redis.call('ZADD', KEYS[3], '+inf', nid)
  else
    redis.call('ZADD', KEYS[3], expires, nid)
    redis.call('ZADD', KEYS[5], expires, nid)
  end
  redis.call('ZADD', KEYS[4], seq, nid)
  if ck then redis.call('ZADD', KEYS[6], 0, ck .. '\0' .. nid) end
  -- over the cap: the oldest read or archived items go first, then the oldest unread
  -- (then any unarchived item: one read before the done index existed)
  local pruned = {}
  local over = math.min(redis.call('HLEN', KEYS[1]) - cap, step)
  while over > 0 do
    local victim = redis.call('ZRANGE', KEYS[16], 0, 0)[1] or redis.call('ZRANGE', KEYS[4], 0, 0)[1]
                   or redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    if not victim then break end
    local ar, c = flags(victim)
    drop(victim, c)
    if ar == 0 then pruned[#pruned + 1] = victim end
    over = over - 1
  end
  local count = count_unread(now)
  local push
  if silent then
    push = '{"type":"silent","ids":' .. cjson.encode({nid}) .. ',"unread":' .. count
  else
    push = string.sub(base, 1, -2)
    if #base > 2 then push = push .. ',' end
    push = push .. '"unread":' .. count
  end
  if #replaced > 0 then push = push .. ',"replaces":' .. cjson.encode(replaced) end
  if #pruned > 0 then push = push .. ',"pruned":' .. cjson.encode(pruned) end
  push = push .. extra .. '}'
  local soffset, spayload, uoffset, upayload = finish(now, count, push)
  return {count, soffset, spayload, uoffset, upayload}
end
"""

NOTIFY = _INBOX_COMMON + r"""
-- ARGV from 13: id, expires (-1 none), has collapse key, collapse key, fields JSON,
--   push JSON without 'unread' / 'replaces', the cap on the user's items, the most
--   items to prune in this call
-- Returns false when the user already has this notification (a retried notify),
-- else {count, stream offset, push, unread offset, unread payload}.
local nid = ARGV[13]
if redis.call('HEXISTS', KEYS[1], nid) == 1 then return false end
local ck = false
if ARGV[15] == '1' then ck = ARGV[16] end
return write_item(tonumber(ARGV[1]), nid, tonumber(ARGV[14]), ck, ARGV[17], ARGV[18],
                  tonumber(ARGV[19]), tonumber(ARGV[20]), '', false)
"""

MARK = _INBOX_COMMON + r"""
-- ARGV from 13: action (read / unread / archive), all (1 / 0), device JSON, ids...
-- Returns {count} when nothing changed, else
-- {count, events offset, event, unread offset, unread payload, {changed ids}}.
local now = tonumber(ARGV[1])
local action = ARGV[13]
local all = ARGV[14] == '1'
collect(now)
local ids
if not all then
  ids = {}
  for i = 16, #ARGV do ids[#ids + 1] = ARGV[i] end
elseif action == 'read' then
  ids = redis.call('ZRANGE', KEYS[4], 0, -1)
else
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local changed = {}
for _, nid in ipairs(ids) do
  local entry = redis.call('HGET', KEYS[1], nid)
  if entry then
    local at, seq, created, expires, rd, ar, ck = cmsgpack.unpack_limit(entry, 6)
    if ar == 0 and (expires < 0 or expires > now) then
      local nrd, nar = rd, ar
      if action == 'read' and rd == 0 then
        nrd = 1
        redis.call('ZREM', KEYS[3], nid)
        redis.call('ZREM', KEYS[4], nid)
        redis.call('ZADD', KEYS[16], seq, nid)
        if ck then redis.call('ZREM', KEYS[6], ck .. '\0' .. nid) end
      elseif action == 'unread' and rd == 1 then
        nrd = 0
        if expires < 0 then
          redis.call('ZADD', KEYS[3], '+inf', nid)
        else
          redis.call('ZADD', KEYS[3], expires, nid)
        end
        redis.call('ZADD', KEYS[4], seq, nid)
        redis.call('ZREM', KEYS[16], nid)
        if ck then redis.call('ZADD', KEYS[6], 0, ck .. '\0' .. nid) end
      elseif action == 'archive' then
        nar = 1
        redis.call('ZADD', KEYS[16], seq, nid)
        redis.call('ZREM', KEYS[2], nid)
        redis.call('ZREM', KEYS[3], nid)
        redis.call('ZREM', KEYS[4], nid)
        if ck then redis.call('ZREM', KEYS[6], ck .. '\0' .. nid) end
      end
      if nrd ~= rd or nar ~= ar then
        redis.call('HSET', KEYS[1], nid,
                   cmsgpack.pack(seq, created, expires, nrd, nar, ck) .. string.sub(entry, at + 1))
        changed[#changed + 1] = nid
      end
    end
  end
end
local count = count_unread(now)
if #changed == 0 then return {count} end
local event = '{"type":"' .. action .. '"'
if all then event = event .. ',"all":true' end
-- MAX_EVENT_IDS (store/base.py): a bigger "all" change lists no ids
if not all or #changed <= 1000 then event = event .. ',"ids":' .. cjson.encode(changed) end
event = event .. ',"unread":' .. count
        .. ',"device":' .. ARGV[15] .. '}'
local soffset, spayload, uoffset, upayload = finish(now, count, event)
return {count, soffset, spayload, uoffset, upayload, changed}
"""

SWEEP = _INBOX_COMMON + r"""
-- ARGV from 13: limit
-- Deletes up to 'limit' expired items. Returns {deleted, next expiry or false, count}
-- when no unarchived item went, else also {events offset, event, unread offset,
-- unread payload, {ids}} after the count.
local now = tonumber(ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[13]))
local ids = {}
for _, nid in ipairs(old) do
  local ar, ck = flags(nid)
  drop(nid, ck)
  if ar == 0 then ids[#ids + 1] = nid end
end
local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
local nexp = first[2] or false
local count = count_unread(now)
if #ids == 0 then return {#old, nexp, count} end
local event = '{"type":"expire","ids":' .. cjson.encode(ids) .. ',"unread":' .. count .. '}'
local soffset, spayload, uoffset, upayload = finish(now, count, event)
return {#old, nexp, count, soffset, spayload, uoffset, upayload, ids}
"""

# The due index: users who have items with an expiry, scored at or before the
# earliest (a superset: kept beside the per-user scripts, which live in other
# slots). A version per user, bumped by every notify that adds an expiry,
# lets the sweeper move or drop an entry only if no such notify came between
# its read and its write.

DUE_ADD = r"""
-- KEYS: due zset, versions hash.  ARGV: expires, users...  (after their notify ran)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'LT', ARGV[1], ARGV[i])
  redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
end
return 1
"""

DUE_TAKE = r"""
-- KEYS: due zset, versions hash.  ARGV: now, limit.  Returns {user, version, ...} due.
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
                         tonumber(ARGV[2]))
local out = {}
for _, u in ipairs(users) do
  out[#out + 1] = u
  out[#out + 1] = redis.call('HGET', KEYS[2], u) or '0'
end
return out
"""

DUE_SET = r"""
-- KEYS: due zset, versions hash.  ARGV: user, version read, next expiry ('' none)
-- Re-scores (or drops) the user unless a notify bumped the version meanwhile.
if (redis.call('HGET', KEYS[2], ARGV[1]) or '0') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""

INBOX = r"""
-- KEYS: items, order, unread by seq, unread.  ARGV: now, before ('' none), limit, unread only
-- Returns {count, entries...}: unexpired items newest first, at most limit + 1.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local src = KEYS[2]
if ARGV[4] == '1' then src = KEYS[3] end
local top = '+inf'
if ARGV[2] ~= '' then top = '(' .. ARGV[2] end
local out = {redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')}
local want = limit + 1
local got, skip, batch = 0, 0, want + 16
while got < want do
  local page = redis.call('ZREVRANGEBYSCORE', src, top, '-inf', 'LIMIT', skip, batch)
  for _, nid in ipairs(page) do
    local entry = redis.call('HGET', KEYS[1], nid)
    if entry then
      local _, _, _, expires = cmsgpack.unpack_limit(entry, 3)
      if expires < 0 or expires > now then
        got = got + 1
        out[#out + 1] = entry
        if got >= want then break end
      end
    end
  end
  if #page < batch then break end
  skip = skip + batch
end
return out
"""

# -- notifications: stats and idempotency ---------------------------------------------------

NOTE = r"""
-- KEYS: notification record.  ARGV: category, targets, created.  Returns 1 if new.
if redis.call('HSETNX', KEYS[1], 'category', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'targets', ARGV[2], 'created', ARGV[3])
return 1
"""

TRACK = r"""
-- KEYS: notification record, its tracked set [, its users' variants, its variant
--   counts (see VARIANT_NOTE) [, its feedback hash]].
-- ARGV: event, user [, reason, the feedback record (JSON: reason, comment, ts)]
-- Returns false if already recorded, else the notification's category. The event
-- also counts for the variant the user was given, if any. The event 'feedback'
-- (issue 13) also counts its reason ('r:' .. reason) and keeps the record.
if redis.call('SADD', KEYS[2], ARGV[1] .. '\0' .. ARGV[2]) == 0 then return false end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if KEYS[4] then
  local variant = redis.call('HGET', KEYS[3], ARGV[2])
  if variant then redis.call('HINCRBY', KEYS[4], variant .. '\0' .. ARGV[1], 1) end
end
if KEYS[5] then
  redis.call('HINCRBY', KEYS[1], 'r:' .. ARGV[3], 1)
  redis.call('HSET', KEYS[5], ARGV[2], ARGV[4])
end
return redis.call('HGET', KEYS[1], 'category') or ''
"""

VARIANT_NOTE = r"""
-- KEYS: the notification's users' variants (hash: user -> variant).
-- ARGV: user, variant ('' : none given), ...
-- Records each given variant unless the user has one (the first stays), before
-- the users' DELIVER scripts, so a track that follows finds it. Returns each
-- user's recorded variant (false: none).
local out = {}
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return out
"""

VARIANT_COUNT = r"""
-- KEYS: the notification's variant counts (hash: variant \0 field -> n).
-- ARGV: field, delta, ...  (target states, after the per-user writes)
for i = 1, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) == 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"""

FORGET_ENGAGEMENT = r"""
-- KEYS: the user's engagement zset of one category, the user's over every category.
-- Forgets the category's engagement in both (a not_interested feedback).
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #members, 1000 do
  redis.call('ZREM', KEYS[2], unpack(members, i, math.min(i + 999, #members)))
end
redis.call('DEL', KEYS[1])
return #members
"""

CLAIM = r"""
-- KEYS: the idempotency record of a notify.  ARGV: now, id, targets, ttl
-- Returns {id, targets, done} of an unexpired earlier claim, else claims it: false.
local now = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[1])
if v then
  local id, targets, expires, done = cmsgpack.unpack(v)
  if expires > now then return {id, targets, done} end
end
redis.call('SET', KEYS[1], cmsgpack.pack(ARGV[2], tonumber(ARGV[3]), now + tonumber(ARGV[4]), 0),
           'PX', ARGV[4])
return false
"""

# -- MQTT sessions --------------------------------------------------------------------------

MQTT_GET = r"""
-- KEYS: the bucket's states, the client's queue.  ARGV: client id
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then return false end
return {state, redis.call('LRANGE', KEYS[2], 0, -1)}
"""

MQTT_SAVE = r"""
-- KEYS: the bucket's states, the client's queue.
-- ARGV: client id, state, replace the queue (1 / 0), entries...
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  for i = 4, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
return 1
"""

MQTT_ENQUEUE = r"""
-- KEYS: the client's queue.  ARGV: limit, entries...  Returns how many were dropped.
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
local n = #ARGV - 1
local take = math.max(0, math.min(room, n))
for i = 2, take + 1, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, take + 1)))
end
return n - take
"""

MQTT_DELETE = r"""
-- KEYS: the bucket's states, the client's queue.  ARGV: client id
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# -- presence -------------------------------------------------------------------------------

_PRESENCE_COMMON = r"""
-- KEYS: the user's entries by expiry (zset), their infos (hash)
local function forget_expired(now)
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #old > 0 then
    redis.call('ZREM', KEYS[1], unpack(old))
    redis.call('HDEL', KEYS[2], unpack(old))
  end
end
"""

PRESENCE_PUT = _PRESENCE_COMMON + r"""
-- ARGV: now, entry, info JSON, ttl.  Returns the user's live entries.
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[4])
forget_expired(now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return redis.call('ZCARD', KEYS[1])
"""

PRESENCE_REMOVE = _PRESENCE_COMMON + r"""
-- ARGV: now, entry.  Returns the user's live entries left.
forget_expired(tonumber(ARGV[1]))
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""

PRESENCE_LIST = r"""
-- KEYS: the user's entries by expiry, their infos.  ARGV: now.  Returns live infos.
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(live))
"""

# Change one user's tag set (audience contract). KEYS[1] the user's tag set.
# ARGV: replace (1: start from none), max tags, number of tags to add, the tags
# to add, then the tags to remove. Returns {old tags, new tags}, or false
# (nothing written) when the result would hold more than max tags.
TAGS = """
local replace, max, nadd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local old = redis.call('SMEMBERS', KEYS[1])
local now, count = {}, 0
if replace == 0 then
  for _, t in ipairs(old) do now[t] = true end
end
for i = 4, 3 + nadd do now[ARGV[i]] = true end
for i = 4 + nadd, #ARGV do now[ARGV[i]] = nil end
local new = {}
for t in pairs(now) do new[#new + 1] = t end
if #new > max then return false end
redis.call('DEL', KEYS[1])
for i = 1, #new, 1000 do
  redis.call('SADD', KEYS[1], unpack(new, i, math.min(i + 999, #new)))
end
return {old, new}
"""

# Which of the query's tags each of many users has (a tags-only selection, one
# Redis only: the users' keys are in many slots). KEYS: the users' tag sets;
# ARGV: the tags (at most 50). Returns per user a bit mask (bit i: has ARGV[i + 1]).
TAG_HAS = """
local out = {}
for k = 1, #KEYS do
  local mask, bit = 0, 1
  for i = 1, #ARGV do
    if redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 1 then mask = mask + bit end
    bit = bit * 2
  end
  out[k] = mask
end
return out
"""

# A tags-only selection, one page of candidates at a time, in Redis (one Redis
# only: the users' tag sets are reached by names the script builds, which a
# cluster forbids; a page of a few thousand keeps Redis busy a few ms).
# KEYS: the source indexes (zsets of user ids: the candidates are their union).
# ARGV: 1 the last candidate tested before ('' none), 2 how many candidates to
# test at most, 3 how many users to select at most (0: no limit: a count), 4 the
# prefix of a user's keys up to the id ('<prefix>{u:'), 5-7 how many of the tags
# are the query's all / any / none, then those tags in that order. Each candidate
# is tested against its own tag set (an index may hold extra users: see the
# store's _write_tags), as the query's matches() does.
# Returns {selected count, where it stopped (the last user selected when the limit
# was reached, else the last candidate tested) or false after the last candidate,
# the users selected (none when counting)}.
TAG_SELECT = """
local after, size, limit, pre = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local na, ny, nn = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local tags = {unpack(ARGV, 8)}
local start = '-'
if after ~= '' then start = '(' .. after end
local cands = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, size)
if #KEYS > 1 then  -- the union's first page is within each index's first page
  local seen = {}
  for _, u in ipairs(cands) do seen[u] = true end
  for k = 2, #KEYS do
    for _, u in ipairs(redis.call('ZRANGEBYLEX', KEYS[k], start, '+', 'LIMIT', 0, size)) do
      if not seen[u] then
        seen[u] = true
        cands[#cands + 1] = u
      end
    end
  end
  table.sort(cands)
  for i = #cands, size + 1, -1 do cands[i] = nil end
end
local find, gsub, call = string.find, string.gsub, redis.call
local n, users = 0, {}
for _, id in ipairs(cands) do
  local u = id
  if find(u, '%', 1, true) or find(u, '}', 1, true) then  -- as redis_wire.escape_tag
    u = gsub(gsub(u, '%%', '%%25'), '}', '%%7D')
  end
  local key = pre .. u .. '}:tags'
  local ok
  if #tags == 0 then  -- no condition: every candidate
    ok = true
  elseif #tags == 1 then  -- one tag, in one of the three parts: selected unless 'none'
    ok = call('SISMEMBER', key, tags[1]) ~= nn
  else
    local has = call('SMISMEMBER', key, unpack(tags))
    ok = true
    for i = 1, na do
      if has[i] == 0 then ok = false break end
    end
    if ok and ny > 0 then
      ok = false
      for i = na + 1, na + ny do
        if has[i] == 1 then ok = true break end
      end
    end
    if ok then
      for i = na + ny + 1, na + ny + nn do
        if has[i] == 1 then ok = false break end
      end
    end
  end
  if ok then
    n = n + 1
    if limit > 0 then
      users[n] = id
      if n == limit then return {n, id, users} end
    end
  end
end
if #cands < size then return {n, false, users} end
return {n, cands[#cands], users}
"""

# What a selection needs of one user (audience contract), in one call per user.
# KEYS: the user's tag set, attributes, last seen [, engagement zset of the
# query's category]; ARGV[1]: the engagement window's start (ms).
# Returns {tags, attributes JSON or false, last seen or false, engagement count}.
PROFILE = """
local count = 0
if KEYS[4] then count = redis.call('ZCOUNT', KEYS[4], ARGV[1], '+inf') end
return {redis.call('SMEMBERS', KEYS[1]), redis.call('GET', KEYS[2]),
        redis.call('GET', KEYS[3]), count}
"""

# -- notification jobs, per-user delivery, the due queue -------------------------------------
#
# Jobs: every job key shares the hash tag {jobs}, so a status change, its indexes,
# the lease and the idempotency key change in one script. A job hash holds id,
# status, category, request (JSON), targets, created, due, expires ('' none),
# cursor (absent: none), owner and until (the lease), seq (its number, from
# {jobs}:seq: the status indexes' score) and o:<state> counts.
# Times in these keys are epoch seconds as Python's repr() writes them. A script
# that reaches a job or a bucket's j:<id> set by a name it builds (prefix from
# ARGV) stays in the slot of the keys it was given: those names share their tag.

# One user's delivery, as DELIVER and DELIVER_MANY run it (KEYS 1-20 and ARGV 1-12
# the user's, as _INBOX_COMMON names them, and KEYS as DELIVER lists them).
_DELIVER_ONE = r"""
local function deliver(nid, due, expires, ck, cap, step, t, keep, state, flags, fields,
                       push, extra, variant)
  local prev = redis.call('HGET', KEYS[17], nid)
  if prev and not (due == 1 and (prev == 'held' or prev == 'scheduled')) then
    return {0, prev}
  end
  redis.call('HSET', KEYS[17], nid, state)
  if variant ~= '' then redis.call('HSETNX', KEYS[19], nid, variant) end
  if string.find(flags, 'l', 1, true) then
    redis.call('ZREMRANGEBYSCORE', KEYS[18], '-inf', '(' .. (t - keep))
    redis.call('ZADD', KEYS[18], t, nid)
    redis.call('PEXPIRE', KEYS[18], math.ceil(keep * 1000))
  end
  if not string.find(flags, 'w', 1, true) or redis.call('HEXISTS', KEYS[1], nid) == 1 then
    return {1, prev or ''}
  end
  if push == '' then push = fields end
  local r = write_item(tonumber(ARGV[1]), nid, expires, ck, fields, push, cap, step,
                       extra, string.find(flags, 's', 1, true) ~= nil)
  return {1, prev or '', r[1], r[2], r[3], r[4], r[5]}
end
"""

DELIVER = _INBOX_COMMON + _DELIVER_ONE + r"""
-- KEYS 17: the user's target records (hash: notification -> state), 18: the user's
--   live pushes of the category (zset: notification by time), 19: the variants of
--   the user's targets (hash: notification -> variant) [, 20 users with retained
--   topics]
-- ARGV from 13: the call's own, the same for every user (msgpack objects: id, due
--   firing (1 / 0), expires (-1 none), collapse key (false: none), the cap on the
--   user's items, the most items to prune, now (seconds), push history kept
--   (seconds)); then the user's: state, flags ('w': write an item, 'l': a live
--   push, 's': silent, the stream keys and ARGV 3-7 being the user's events, which
--   get a "silent" event), fields JSON, push JSON ('': the fields), extra push
--   members (raw JSON), variant ('': none; the first recorded stays)
-- Returns {0, state} when the user is already recorded (skipped), {1, previous state
-- or ''} when recorded without an item, else {1, previous, count, stream offset,
-- push, unread offset, unread payload}.
users_key = KEYS[20]
local nid, due, expires, ck, cap, step, t, keep = cmsgpack.unpack(ARGV[13])
return deliver(nid, due, expires, ck, cap, step, t, keep, ARGV[14], ARGV[15], ARGV[16],
               ARGV[17], ARGV[18], ARGV[19])
"""

# DELIVER for many users in one call (one Redis only: the users' keys are in many
# slots): each user's step is DELIVER's, the same guarantees (the call is atomic as
# a whole), and what every user shares travels once. The shared functions read
# KEYS / ARGV: here those are locals the loop fills with each user's in turn.
# KEYS: per user DELIVER's keys 1-19, then the users with retained topics.
# ARGV: 1 msgpack objects: now (ms), announce mode, the JSON wire tail, then
#   DELIVER's ARGV 13 (id .. push history kept); 2 a msgpack array of texts
#   (fields JSON, push JSON pairs); 3 a msgpack array, per user: stream epoch,
#   stream size, stream ttl, stream head, unread-topic epoch, unread head, unread
#   topic, user id, state, flags, the index of its fields in the texts (0: none),
#   extra push members, variant.
# Returns per user what DELIVER returns.
DELIVER_MANY = r"""
local CALL_KEYS, CALL_ARGV = KEYS, ARGV
local KEYS, ARGV = {}, {}
""" + _INBOX_COMMON + _DELIVER_ONE + r"""
local now, mode, tail, nid, due, expires, ck, cap, step, t, keep =
  cmsgpack.unpack(CALL_ARGV[1])
local texts = cmsgpack.unpack(CALL_ARGV[2])
local users = cmsgpack.unpack(CALL_ARGV[3])
users_key = CALL_KEYS[#CALL_KEYS]
ARGV[1], ARGV[2], ARGV[7], ARGV[10] = now, mode, tail, tail
KEYS[20] = users_key
local out = {}
for i, u in ipairs(users) do
  local base = (i - 1) * 19
  for k = 1, 19 do KEYS[k] = CALL_KEYS[base + k] end
  ARGV[3], ARGV[4], ARGV[5], ARGV[6] = u[1], u[2], u[3], u[4]
  ARGV[8], ARGV[9], ARGV[11], ARGV[12] = u[5], u[6], u[7], u[8]
  local fields, push = '', ''
  if u[11] > 0 then fields, push = texts[u[11]], texts[u[11] + 1] end
  out[i] = deliver(nid, due, expires, ck, cap, step, t, keep, u[9], u[10], fields, push,
                   u[12], u[13])
end
return out
"""

JOB_CREATE = r"""
-- KEYS: job, due zset, lease zset, 'scheduled' index, 'sending' index, idempotency
--   key (the job again: none), the job counter
-- ARGV: id, category, request, targets, created, due, expires, has key, key ttl (ms),
--   owner ('' none: scheduled), lease end
-- Returns {duplicate (1 / 0), job id}. The job's number (seq) orders the listings.
if ARGV[8] == '1' then
  local first = redis.call('GET', KEYS[6])
  if first then return {1, first} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ARGV[1]} end
local seq = redis.call('INCR', KEYS[7])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', 'scheduled', 'category', ARGV[2],
           'request', ARGV[3], 'targets', ARGV[4], 'created', ARGV[5], 'due', ARGV[6],
           'expires', ARGV[7], 'seq', seq)
if ARGV[10] == '' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
  redis.call('ZADD', KEYS[4], seq, ARGV[1])
else  -- its creator sends it now; another node resumes it when the lease ends
  redis.call('HSET', KEYS[1], 'status', 'sending', 'owner', ARGV[10], 'until', ARGV[11])
  redis.call('ZADD', KEYS[3], ARGV[11], ARGV[1])
  redis.call('ZADD', KEYS[5], seq, ARGV[1])
end
if ARGV[8] == '1' then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[9]) end
return {0, ARGV[1]}
"""

JOB_CLAIM = r"""
-- KEYS: due zset, lease zset, 'scheduled' index, 'sending' index
-- ARGV: job key prefix, now, owner, lease end, limit
-- Due scheduled jobs, then sending jobs whose lease ended, leased to the owner.
-- Returns {job hash (HGETALL), ...}.
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
if #ids < limit then
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit - #ids)
  for _, id in ipairs(stale) do ids[#ids + 1] = id end
end
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[1] .. id
  local st = redis.call('HGET', k, 'status')
  redis.call('ZREM', KEYS[1], id)
  if st == 'scheduled' or st == 'sending' then
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[4], redis.call('HGET', k, 'seq'), id)
    redis.call('HSET', k, 'status', 'sending', 'owner', ARGV[3], 'until', ARGV[4])
    redis.call('ZADD', KEYS[2], ARGV[4], id)
    out[#out + 1] = redis.call('HGETALL', k)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"""

# the lease check of progress and finish: the caller's, unexpired, job sending
_JOB_HELD = r"""
local function held(k, now, owner)
  local v = redis.call('HMGET', k, 'status', 'owner', 'until')
  return v[1] == 'sending' and v[2] == owner and tonumber(v[3]) > now
end
"""

JOB_PROGRESS = _JOB_HELD + r"""
-- KEYS: job, lease zset.  ARGV: id, now, owner, has cursor, cursor, lease end
-- Returns 1, or 0 (nothing changed) when the lease is not held.
if not held(KEYS[1], tonumber(ARGV[2]), ARGV[3]) then return 0 end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'cursor', ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'cursor')
end
redis.call('HSET', KEYS[1], 'until', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
return 1
"""

JOB_FINISH = _JOB_HELD + r"""
-- KEYS: job, lease zset, 'sending' index, 'sent' index.  ARGV: id, now, owner
-- Returns 1, or 0 (nothing changed) when the lease is not held.
if not held(KEYS[1], tonumber(ARGV[2]), ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'sent')
redis.call('HDEL', KEYS[1], 'cursor', 'owner', 'until')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[1], 'seq'), ARGV[1])
return 1
"""

JOB_REQUEUE = _JOB_HELD + r"""
-- KEYS: job, due zset, lease zset, 'scheduled' index, 'sending' index
-- ARGV: id, now, owner, request, due
-- Back to scheduled at due with the new request and no cursor (a next phase).
-- Returns 1, or 0 (nothing changed) when the lease is not held.
if not held(KEYS[1], tonumber(ARGV[2]), ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'scheduled', 'request', ARGV[4], 'due', ARGV[5])
redis.call('HDEL', KEYS[1], 'cursor', 'owner', 'until')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[1], 'seq'), ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
"""

JOB_CANCEL = r"""
-- KEYS: job, due zset, lease zset, 'scheduled', 'sending', 'sent', 'cancelled' indexes
-- ARGV: id, also a sent job (1 / 0: the caller found due entries of it)
-- Cancels a scheduled or sending job (or a sent one).  Returns its status after
-- (false: no such job).
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st ~= 'scheduled' and st ~= 'sending' and not (st == 'sent' and ARGV[2] == '1') then
  return st
end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('HDEL', KEYS[1], 'owner', 'until')
for i = 2, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZADD', KEYS[7], redis.call('HGET', KEYS[1], 'seq'), ARGV[1])
return 'cancelled'
"""

JOB_COUNT = r"""
-- KEYS: job.  ARGV: field, delta, ...  (target counts, after the per-user writes)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

JOBS_PAGE = r"""
-- KEYS: a status index.  ARGV: job key prefix, after this job number, limit
-- Returns up to limit + 1 job hashes (HGETALL) in creation order.
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0,
                       tonumber(ARGV[3]) + 1)
for _, id in ipairs(ids) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then out[#out + 1] = h end
end
return out
"""

# The due queue, spread over buckets {dq:<n>} by user: q (zset: "<id>\0<user>" by
# the time it may be handed out: its due time, or the end of its lease once
# claimed), due (hash: entry -> due time), x (set: cancelled notifications),
# j:<id> (set: a notification's entries in the bucket, for cancelling).

DUE_PUT = r"""
-- KEYS: q, due, x.  ARGV: j: key prefix, then id, user, due, only if absent (1 / 0)
-- for each entry (an entry of a cancelled notification is not added)
for i = 2, #ARGV, 4 do
  local m = ARGV[i] .. '\0' .. ARGV[i + 1]
  if redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0
     and (ARGV[i + 3] == '0' or redis.call('HEXISTS', KEYS[2], m) == 0) then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], m)
    redis.call('HSET', KEYS[2], m, ARGV[i + 2])
    redis.call('SADD', ARGV[1] .. ARGV[i], m)
  end
end
return 1
"""

DUE_CLAIM = r"""
-- KEYS: q, due, x.  ARGV: j: key prefix, now, lease end, limit
-- Returns {entry, due, ...} leased to the caller (entries of cancelled ones dropped).
local ms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, m in ipairs(ms) do
  local nid = string.sub(m, 1, string.find(m, '\0', 1, true) - 1)
  if redis.call('SISMEMBER', KEYS[3], nid) == 1 then
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], m)
    redis.call('SREM', ARGV[1] .. nid, m)
  else
    redis.call('ZADD', KEYS[1], ARGV[3], m)
    out[#out + 1] = m
    out[#out + 1] = redis.call('HGET', KEYS[2], m)
  end
end
return out
"""

DUE_DONE = r"""
-- KEYS: q, due.  ARGV: j: key prefix, then id, user for each entry to drop
for i = 2, #ARGV, 2 do
  local m = ARGV[i] .. '\0' .. ARGV[i + 1]
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  redis.call('SREM', ARGV[1] .. ARGV[i], m)
end
return 1
"""

DUE_CANCEL = r"""
-- KEYS: q, due, x.  ARGV: j: key prefix, id.  Drops the notification's entries and
-- keeps any added later from being handed out.
redis.call('SADD', KEYS[3], ARGV[2])
local j = ARGV[1] .. ARGV[2]
for _, m in ipairs(redis.call('SMEMBERS', j)) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
redis.call('DEL', j)
return 1
"""
