-- The notes of jobs that succeeded with nothing to keep (a None result, or a task
-- with store_result=False): no record, only 'attempts|ms' under the job's id in the
-- hash of the time slice it finished in, done:<start> ('ms' after the slice's start,
-- epoch seconds), which expires done_ttl seconds after the slice ends. A slice is a
-- fifth of done_ttl, between 1 and 60 seconds, so a note lives done_ttl to 1.2 x
-- done_ttl (plus at most a second) and the live slices are few. The sorted set
-- 'done' lists them (score: when the slice's hash expires). keys.py Keys.done.

local done_slices = nil  -- the slices in the index, read once per call

local function record_done(id, attempt, ttl, now)
    local width = math.max(1, math.min(60, math.floor(tonumber(ttl) / 5)))
    local start = math.floor(now / width) * width
    local start_s = string.format('%d', start)
    local bucket = key('done', start_s)
    local value = attempt .. '|' .. string.format('%d', (now - start) * 1000)
    if redis.call('EXISTS', bucket) == 1 then
        redis.call('HSET', bucket, id, value)
        return
    end
    -- The first job of its slice: the hash and its place in the index (whose
    -- expired slices go now, so it holds about six entries).
    local expires = start + width + tonumber(ttl)
    redis.call('HSET', bucket, id, value)
    redis.call('EXPIREAT', bucket, expires)
    redis.call('ZREMRANGEBYSCORE', key('done'), '-inf', now)
    redis.call('ZADD', key('done'), expires, start_s)
end

-- A job's note ('attempts|ms'), or nil.
local function done_note(id)
    if done_slices == nil then
        done_slices = redis.call('ZRANGE', key('done'), 0, -1)
    end
    for _, start in ipairs(done_slices) do
        local note = redis.call('HGET', key('done', start), id)
        if note then
            return note
        end
    end
    return nil
end
