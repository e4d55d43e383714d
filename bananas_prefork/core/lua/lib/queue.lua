-- Ready lists, the heads index and wake-up tokens.
--
-- ready:<prio>:<type>  list of job ids, oldest at the head
-- heads:<prio>         zset type -> seq of the job at the head of its ready list;
--                      the oldest job of a priority is the lowest score
-- gheads:<prio>:<gid>  the same, for the types of one consumer group only
-- groups:<type>        ids of the consumer groups that serve a type
-- wake:<prio>:<type>   tokens that idle consumers of that type BLPOP on
-- wake:<prio>:*        tokens that idle consumers of every type BLPOP on
-- queues               set of 'prio:type' pairs ever used (depth reports)
-- scheduled            zset job id -> due time
-- scheduler:wake       one token wakes the scheduler leader early
-- dead                 zset job id -> time it died

-- Enough tokens to wake every idle consumer of a burst; more idle consumers
-- than this still wake through their bounded BLPOP timeout.
local WAKE_CAP = 256

-- Consumers of several (not all) types fetch from their group's copy of the
-- heads index, gheads:<prio>:<gid>, which lists only their types: finding the
-- oldest of 100 types then costs what finding it among 1 does. groups:<type>
-- names the groups that serve a type; every change of a type's head below is
-- made in heads:<prio> and in each of those copies (lib/fetch.lua builds a
-- group's copy when the group first fetches).
local function note_head(prio, jtype, seq)
    local added = redis.call('ZADD', key('heads', prio), seq, jtype)
    for _, gid in ipairs(redis.call('SMEMBERS', key('groups', jtype))) do
        redis.call('ZADD', key('gheads', prio, gid), seq, jtype)
    end
    return added
end

local function drop_head(prio, jtype)
    redis.call('ZREM', key('heads', prio), jtype)
    for _, gid in ipairs(redis.call('SMEMBERS', key('groups', jtype))) do
        redis.call('ZREM', key('gheads', prio, gid), jtype)
    end
end

-- The head of a type's ready list: its seq, or nil (and the type dropped from
-- the index) when the list is empty.
local function exact_head(prio, jtype)
    local head = redis.call('LINDEX', key('ready', prio, jtype), 0)
    if head then
        local seq = redis.call('HGET', key('job', head), 'seq') or 0
        note_head(prio, jtype, seq)
        return seq
    end
    drop_head(prio, jtype)
    return nil
end

-- The heads index is exact whenever it lists two types or more. A type alone
-- in it may keep a lower (older) score than its real head, and may stay listed
-- for a moment after its list empties: with nothing to compare it with, a
-- fetch takes it without the LINDEX, HGET and ZADD that keeping the score
-- exact costs on every pop (lib/fetch.lua), and drops it once it finds the
-- list empty. So when a second type enters the index, the first one's score
-- is made exact here.
local function refresh_lone_head(prio, newcomer)
    local members = redis.call('ZRANGE', key('heads', prio), 0, 2)
    if #members == 2 then
        exact_head(prio, members[1] == newcomer and members[2] or members[1])
    end
end

-- Record `seq` (text) as the head of a ready list of `jtype`.
local function set_head(prio, jtype, seq)
    if note_head(prio, jtype, seq) == 1 then
        refresh_lone_head(prio, jtype)
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
-- index, so the index is left as it is (see above); otherwise it moves to the
-- next job's seq. Returns the id (false when the list was empty) and whether
-- jobs remain (nil when not looked at).
local function pop_ready(prio, jtype, alone)
    local id = redis.call('LPOP', key('ready', prio, jtype))
    if alone and id then
        return id, nil
    end
    return id, exact_head(prio, jtype) ~= nil
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

-- Move a job to the dead-letter set; its record expires after dead_ttl seconds, and
-- past `cap` dead jobs the oldest go (set and record), so a storm of failures
-- cannot fill Redis.
local function bury(id, error, traceback, now, now_s, dead_ttl, cap)
    local job = key('job', id)
    local dead = key('dead')
    redis.call('HSET', job, 'state', 'dead', 'error', error, 'traceback', traceback,
        'finished_at', now_s)
    redis.call('ZADD', dead, now_s, id)
    redis.call('EXPIRE', job, dead_ttl)
    redis.call('ZREMRANGEBYSCORE', dead, '-inf', now - tonumber(dead_ttl))
    local over = redis.call('ZCARD', dead) - tonumber(cap)
    if over > 0 then
        local dropped = redis.call('ZPOPMIN', dead, over)
        for i = 1, #dropped, 2 do
            redis.call('DEL', key('job', dropped[i]))
        end
    end
end
