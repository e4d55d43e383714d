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
--
-- A bucket is 'time,done,failed,waited_ms,started,high,normal,low': its start
-- (epoch seconds), the sums of what masters added, and the ready jobs per
-- priority (-1 until measured). A slot holding an older bucket is reset, so
-- each ring stays at its number of slots. The depths are measured once per
-- second, by whichever master writes first; a minute keeps its highest.
--
-- Returns 1 when this call measured the depths, else 0.

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

local function add(v)
    for i = 2, 5 do
        v[i] = v[i] + tonumber(ARGV[i])
    end
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

local now = math.floor((redis_now()))
local second_slot = tostring(now % tonumber(ARGV[6]))
local minute = now - now % 60
local minute_slot = tostring((minute / 60) % tonumber(ARGV[7]))

local s = load(KEYS[1], second_slot, now)
local m = load(KEYS[2], minute_slot, minute)
add(s)
add(m)
local measured = 0
if s[DEPTH.high] < 0 then
    measured = 1
    for prio, n in pairs(depths()) do
        s[DEPTH[prio]] = n
        m[DEPTH[prio]] = math.max(m[DEPTH[prio]], n)
    end
end
save(KEYS[1], second_slot, s)
save(KEYS[2], minute_slot, m)
return measured
