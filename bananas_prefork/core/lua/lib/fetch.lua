-- Fetch the next job for one consumer slot, recording it as in flight in the
-- same step: there is no moment where a job is neither queued nor owned.
--
-- owned:<owner>   hash slot -> job id of the owner's running jobs
-- owner:<owner>   the owner's liveness key (TTL, renewed by its supervisor)
-- owners          set of owners that have held jobs (scanned for dead owners)

local JOB_FIELDS = {'name', 'priority', 'args', 'kwargs', 'options', 'attempts', 'enqueued_at',
    'ready_at'}
local ATTEMPTS = 7  -- position of 'attempts' in a reply ({id, fields...})

-- {id, name, priority, args, kwargs, options, attempts, enqueued_at, ready_at}; name
-- is false when the job's record is gone, ready_at when it went straight to its queue.
local function job_reply(id)
    local fields = redis.call('HMGET', key('job', id), unpack(JOB_FIELDS))
    table.insert(fields, 1, id)
    return fields
end

-- The job type whose head job is the oldest among `types` ('*' = any type).
local function oldest_type(prio, types)
    local heads = key('heads', prio)
    if types[1] == '*' then
        return redis.call('ZRANGE', heads, 0, 0)[1]
    end
    local best, best_seq = nil, nil
    for _, jtype in ipairs(types) do
        local seq = redis.call('ZSCORE', heads, jtype)
        if seq and (best_seq == nil or tonumber(seq) < best_seq) then
            best, best_seq = jtype, tonumber(seq)
        end
    end
    return best
end

local function claim(owned, owner_key, owner, slot, owner_ttl_ms, reply, now_s)
    local id = reply[1]
    local job = key('job', id)
    redis.call('HSET', job, 'state', 'running', 'owner', owner, 'started_at', now_s)
    reply[ATTEMPTS] = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('HSET', owned, slot, id)
    redis.call('SADD', key('owners'), owner)
    redis.call('SET', owner_key, '1', 'PX', owner_ttl_ms)
    return reply
end

-- Idle consumers block on wake lists; once their queues are empty every token
-- there is stale, so drop them rather than let the next idle wait spin on them.
local function clear_stale_tokens(prios, types)
    for _, prio in ipairs(prios) do
        for _, jtype in ipairs(types) do
            redis.call('DEL', key('wake', prio, jtype))
        end
    end
end

local function fetch(owned, owner_key, owner, slot, owner_ttl_ms, prios, types, now_s)
    local held = redis.call('HGET', owned, slot)
    if held then
        -- The reply to an earlier fetch for this slot was lost: hand the same run back.
        return job_reply(held)
    end
    for _, prio in ipairs(prios) do
        local jtype = oldest_type(prio, types)
        while jtype do
            local id = pop_ready(prio, jtype)
            if id then
                local reply = job_reply(id)
                if reply[2] then
                    return claim(owned, owner_key, owner, slot, owner_ttl_ms, reply, now_s)
                end
            end
            jtype = oldest_type(prio, types)
        end
    end
    clear_stale_tokens(prios, types)
    return nil
end
