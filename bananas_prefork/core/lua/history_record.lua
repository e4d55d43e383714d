-- history_record: add one master's figures of the last second to the cluster's
-- history, a ring of per-second buckets (the last 10 minutes) and one of
-- per-minute buckets (the last 24 hours). Several masters add into the same
-- buckets; Redis' clock names the bucket, so every machine agrees on it.
--
-- KEYS[1]  history:second   hash slot -> packed bucket
-- KEYS[2]  history:minute   hash slot -> packed bucket
-- KEYS[3]  queues           set of 'prio:type' pairs ever used
-- Keys built from the prefix (lib/keys.lua): ready:<prio>:<type>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2] jobs done   ARGV[3] runs failed
-- ARGV[4]  milliseconds the started jobs waited in their queues   ARGV[5] jobs started
-- ARGV[6]  slots of the per-second ring   ARGV[7] slots of the per-minute ring
-- ARGV[8]  the second this master's last call wrote ('0': none). A master's publishes
--          are about, not exactly, a second apart: what it adds is spread evenly over
--          the seconds since then (at most 10), so no second is skipped or doubled.
--
-- A bucket is 'time,done,failed,waited_ms,started,high,normal,low': its start
-- (epoch seconds), the sums of what masters added, and the ready jobs per
-- priority (-1 until measured). A slot holding an older bucket is reset, so
-- each ring stays at its number of slots. The depths are measured once per
-- second, by whichever master writes first; a minute keeps its highest.
--
-- Returns {1 when this call measured the depths else 0, the second it wrote}.

--! include lib/keys.lua

local DEPTH = {high = 6, normal = 7, low = 8}

local function load(hash, slot, start)
    local raw = redis.call('HGET', hash, slot)
    local v = {}
    if raw then
        for n in string.gmatch(raw, '[^,]+') do
            v[#v + 1] = tonumber(n)
        end
    end
    if v[1] ~= start or #v ~= 8 then
        v = {start, 0, 0, 0, 0, -1, -1, -1}
    end
    return v
end

local function save(hash, slot, v)
    local parts = {}
    for i = 1, #v do
        parts[i] = string.format('%.0f', v[i])
    end
    redis.call('HSET', hash, slot, table.concat(parts, ','))
end

local function depths()
    local out = {high = 0, normal = 0, low = 0}
    for _, pair in ipairs(redis.call('SMEMBERS', KEYS[3])) do
        local colon = string.find(pair, ':', 1, true)
        local prio = string.sub(pair, 1, colon - 1)
        if out[prio] then
            out[prio] = out[prio] + redis.call('LLEN', key('ready', prio, string.sub(pair, colon + 1)))
        end
    end
    return out
end

local MAX_SPAN = 10
local now = math.floor((redis_now()))
local last = tonumber(ARGV[8])
local span = 1
if last > 0 then
    span = math.max(1, math.min(now - last, MAX_SPAN))
end
local second_slots, minute_slots = tonumber(ARGV[6]), tonumber(ARGV[7])
local totals = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local minutes, touched = {}, {}
local measured = nil

for back = span - 1, 0, -1 do
    local second = now - back
    local slot = tostring(second % second_slots)
    local s = load(KEYS[1], slot, second)
    local minute = second - second % 60
    if not minutes[minute] then
        minutes[minute] = {0, 0, 0, 0}
        touched[#touched + 1] = minute
    end
    for i = 1, 4 do
        local share = math.floor(totals[i] / span)
        if back == 0 then  -- the remainder goes to the latest second
            share = totals[i] - share * (span - 1)
        end
        s[i + 1] = s[i + 1] + share
        minutes[minute][i] = minutes[minute][i] + share
    end
    if back == 0 and s[DEPTH.high] < 0 then
        measured = depths()
        for prio, n in pairs(measured) do
            s[DEPTH[prio]] = n
        end
    end
    save(KEYS[1], slot, s)
end

for _, minute in ipairs(touched) do
    local slot = tostring((minute / 60) % minute_slots)
    local m = load(KEYS[2], slot, minute)
    for i = 1, 4 do
        m[i + 1] = m[i + 1] + minutes[minute][i]
    end
    if measured and minute == now - now % 60 then
        for prio, n in pairs(measured) do
            m[DEPTH[prio]] = math.max(m[DEPTH[prio]], n)
        end
    end
    save(KEYS[2], slot, m)
end
return {measured and 1 or 0, now}
