-- The notes of jobs that succeeded with nothing to keep (a None result, or a task
-- with store_result=False): no record, only a note under the job's id, 'ms' (the
-- finish time, in ms after its slice's start) or 'attempts|ms' after more than one
-- attempt, 'attempts:redeliveries|ms' when runs were lost with their child. A slice is a fifth of done_ttl, between 1 and 60 seconds; its notes go
-- to small hashes, done:<start>:<shard>, which Redis keeps as compact listpacks (up
-- to 128 entries each): about 30 bytes a note instead of 110 in one big hash.
-- Shard 'a' takes a slice's first notes; once it is full the job's shard of 256
-- takes them, and once that is full its shard of 4096 more (for high rates).
-- Every shard of a slice expires done_ttl seconds after the slice ends, so a note
-- lives done_ttl to 1.2 x done_ttl (plus a second). The sorted set 'done' lists
-- the live slices (score: when they expire). keys.py Keys.done; broker.py
-- note_shards mirrors note_shards.

local SHARDS, MORE_SHARDS, SHARD_FULL = 256, 4096, 120
local done_slices = nil  -- the slices in the index, read once per call

-- The job's shard at each level (the same hash as broker.py note_shards).
local function note_shards(id)
    local h = 0
    for i = math.max(1, #id - 7), #id do
        h = (h * 257 + string.byte(id, i)) % 1000003
    end
    return {'a', tostring(h % SHARDS), tostring(SHARDS + h % MORE_SHARDS)}
end

local function record_done(id, attempt, redeliveries, ttl, now)
    local width = math.max(1, math.min(60, math.floor(tonumber(ttl) / 5)))
    local start = math.floor(now / width) * width
    local start_s = string.format('%d', start)
    local ms = string.format('%d', (now - start) * 1000)
    local shards = note_shards(id)
    local shard, size
    for level = 1, 3 do
        shard = key('done', start_s, shards[level])
        size = redis.call('HLEN', shard)
        if size < SHARD_FULL then
            break
        end
    end
    local runs = redeliveries and attempt .. ':' .. redeliveries or attempt
    redis.call('HSET', shard, id, runs == '1' and ms or runs .. '|' .. ms)
    if size == 0 then
        -- A new shard: its lifetime, and the slice in the index (whose expired
        -- slices go now, so it holds about six).
        local expires = start + width + tonumber(ttl)
        redis.call('EXPIREAT', shard, expires)
        redis.call('ZREMRANGEBYSCORE', key('done'), '-inf', now)
        redis.call('ZADD', key('done'), expires, start_s)
    end
end

-- A job's note, or nil.
local function done_note(id)
    if done_slices == nil then
        done_slices = redis.call('ZRANGE', key('done'), 0, -1)
    end
    local shards = note_shards(id)
    for _, start in ipairs(done_slices) do
        for level = 1, 3 do
            local note = redis.call('HGET', key('done', start, shards[level]), id)
            if note then
                return note
            end
        end
    end
    return nil
end

-- Whether a note is of this attempt.
local function note_of_attempt(note, attempt)
    local runs = string.match(note, '^([^|:]+)[|:]') or '1'
    return runs == attempt
end
