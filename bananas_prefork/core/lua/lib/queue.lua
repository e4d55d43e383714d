-- Ready lists, the heads index and wake-up tokens.
--
-- ready:<prio>:<type>  list of job ids, oldest at the head
-- heads:<prio>         zset type -> seq of the job at the head of its ready list;
--                      the oldest job of a priority is the lowest score
-- wake:<prio>:<type>   tokens that idle consumers of that type BLPOP on
-- wake:<prio>:*        tokens that idle consumers of every type BLPOP on
-- queues               set of 'prio:type' pairs ever used (depth reports)
-- scheduled            zset job id -> due time
-- scheduler:wake       one token wakes the scheduler leader early
-- dead                 zset job id -> time it died

-- Enough tokens to wake every idle consumer of a burst; more idle consumers
-- than this still wake through their bounded BLPOP timeout.
local WAKE_CAP = 256

-- The heads index is exact whenever it lists two types or more. A type alone
-- in it may keep a lower (older) score than its real head, and may stay listed
-- for a moment after its list empties: with nothing to compare it with, a
-- fetch takes it without the LINDEX, HGET and ZADD that keeping the score
-- exact costs on every pop (lib/fetch.lua), and drops it once it finds the
-- list empty. So when a second type enters the index, the first one's score
-- is made exact here.
local function refresh_lone_head(heads, prio, newcomer)
    local members = redis.call('ZRANGE', heads, 0, 2)
    if #members ~= 2 then
        return
    end
    local other = members[1] == newcomer and members[2] or members[1]
    local head = redis.call('LINDEX', key('ready', prio, other), 0)
    if head then
        redis.call('ZADD', heads, redis.call('HGET', key('job', head), 'seq') or 0, other)
    else
        redis.call('ZREM', heads, other)
    end
end

-- Record `seq` (text) as the head of a ready list of `jtype`.
local function set_head(prio, jtype, seq)
    local heads = key('heads', prio)
    if redis.call('ZADD', heads, seq, jtype) == 1 then
        refresh_lone_head(heads, prio, jtype)
    end
end

-- Push one job; `seq` is its place in the global order, as text. Returns the
-- list's new length (1: the list was empty).
local function push_ready(id, prio, jtype, seq, front)
    local list = key('ready', prio, jtype)
    local len
    if front then
        len = redis.call('LPUSH', list, id)
    else
        len = redis.call('RPUSH', list, id)
    end
    if front or len == 1 then
        set_head(prio, jtype, seq)
    end
    return len
end

-- Append a run of jobs of one type in one RPUSH; `first_seq` is the first one's
-- place in the global order. Returns true when the list was empty before.
local function push_run(prio, jtype, ids, first_seq)
    local len = redis.call('RPUSH', key('ready', prio, jtype), unpack(ids))
    if len == #ids then
        set_head(prio, jtype, first_seq)
        return true
    end
    return false
end

-- Pop the head of a ready list. `alone`: its type is the only one in the heads
-- index, so the index is left as it is (see refresh_lone_head); otherwise it
-- moves to the next job's seq. Returns the id (false when the list was empty)
-- and whether jobs remain (nil when not looked at).
local function pop_ready(prio, jtype, alone)
    local list = key('ready', prio, jtype)
    local id = redis.call('LPOP', list)
    if alone and id then
        return id, nil
    end
    local next_id = redis.call('LINDEX', list, 0)
    if next_id then
        redis.call('ZADD', key('heads', prio), redis.call('HGET', key('job', next_id), 'seq') or 0,
            jtype)
    else
        redis.call('ZREM', key('heads', prio), jtype)
    end
    return id, next_id ~= false
end

local ONE_TOKEN = {'1'}

local function push_tokens(list, count)
    local tokens = ONE_TOKEN
    if count > 1 then
        tokens = {}
        for i = 1, math.min(count, WAKE_CAP) do
            tokens[i] = '1'
        end
    end
    if redis.call('RPUSH', list, unpack(tokens)) > WAKE_CAP then
        redis.call('LTRIM', list, -WAKE_CAP, -1)
    end
end

-- Wake up to `count` idle consumers that serve this priority and type.
local function wake(prio, jtype, count)
    push_tokens(key('wake', prio, jtype), count)
    push_tokens(key('wake', prio, '*'), count)
end

-- Called when a job is scheduled: wake the leader if it is due before all others.
local function schedule(id, due)
    local first = redis.call('ZRANGE', key('scheduled'), 0, 0, 'WITHSCORES')
    if first[2] == nil or due < tonumber(first[2]) then
        redis.call('DEL', key('scheduler', 'wake'))
        redis.call('RPUSH', key('scheduler', 'wake'), '1')
    end
    redis.call('ZADD', key('scheduled'), due, id)
end

-- Move a job to the dead-letter set; its record expires after dead_ttl seconds.
local function bury(id, error, traceback, now, now_s, dead_ttl)
    local job = key('job', id)
    redis.call('HSET', job, 'state', 'dead', 'error', error, 'traceback', traceback,
        'finished_at', now_s)
    redis.call('ZADD', key('dead'), now_s, id)
    redis.call('EXPIRE', job, dead_ttl)
    redis.call('ZREMRANGEBYSCORE', key('dead'), '-inf', now - tonumber(dead_ttl))
end
