-- Fetch the next job for one consumer slot, recording it as in flight in the
-- same step: there is no moment where a job is neither queued nor owned.
--
-- owned:<owner>   hash slot -> job id of the owner's running jobs
-- owner:<owner>   the owner's liveness key (TTL, renewed by its supervisor)
-- owners          set of owners that have held jobs (scanned for dead owners)

local JOB_FIELDS = {'name', 'priority', 'args', 'kwargs', 'options', 'attempts', 'enqueued_at',
    'ready_at'}
local ATTEMPTS = 7  -- position of 'attempts' in a reply ({id, fields...})
local NEED_TYPES = 'types'  -- fetch's answer when it needs the consumer's job types

-- {id, name, priority, args, kwargs, options, attempts, enqueued_at, ready_at}; name
-- is false when the job's record is gone, ready_at when it went straight to its queue.
local function job_reply(id)
    local fields = redis.call('HMGET', key('job', id), unpack(JOB_FIELDS))
    table.insert(fields, 1, id)
    return fields
end

-- A group's copy of the heads index (lib/queue.lua), for every priority, is
-- built when a consumer of the group finds nothing in it and the group's record
-- (group:<gid>) is missing: the group's first fetch, a Redis that lost its data,
-- or a group pruned (groups_prune.lua) after GROUP_TTL without an empty fetch.
-- Returns true when it built the copy, nil when it was there, false when it
-- needs the group's types and `types` is empty.
local GROUP_TTL = 600  -- seconds a group lives after its last empty fetch

local function ensure_group(gid, types)
    local marker = key('group', gid)
    if redis.call('EXPIRE', marker, GROUP_TTL) == 1 then
        return nil
    end
    if #types == 0 then
        return false
    end
    for _, jtype in ipairs(types) do
        redis.call('SADD', key('groups', jtype), gid)
    end
    for _, prio in ipairs(PRIORITIES) do
        local gheads = key('gheads', prio, gid)
        redis.call('DEL', gheads)
        local seqs = redis.call('ZMSCORE', key('heads', prio), unpack(types))
        for j, jtype in ipairs(types) do
            if seqs[j] then
                redis.call('ZADD', gheads, seqs[j], jtype)
            end
        end
    end
    redis.call('SET', marker, '1', 'EX', GROUP_TTL)
    redis.call('HSET', key('group_types'), gid, cjson.encode(types))
    return true
end

-- The job type whose head job is the oldest among `types` ('*' = any type; a
-- group's types when `gid` is not ''), and whether it is the only type in the
-- heads index (see lib/queue.lua).
local function oldest_type(prio, types, gid)
    if types[1] == '*' then
        local first = redis.call('ZRANGE', key('heads', prio), 0, 1)
        return first[1], first[2] == nil
    end
    if gid ~= '' then
        return redis.call('ZRANGE', key('gheads', prio, gid), 0, 0)[1], false
    end
    local heads = key('heads', prio)
    local best, best_seq = nil, nil
    for _, jtype in ipairs(types) do
        local seq = redis.call('ZSCORE', heads, jtype)
        if seq and (best_seq == nil or tonumber(seq) < best_seq) then
            best, best_seq = jtype, tonumber(seq)
        end
    end
    return best, false
end

-- The slot's liveness is its owner key, which the supervisor renews. A claim
-- into an empty slot (the first, or the first after the slot idled or the owner
-- was recovered as dead while still working) creates the key when it is
-- missing and lists the owner for recovery scans; a claim that refills the
-- slot its run just left needs neither: owned:<owner> only loses its entries
-- together with the owner's listing (recover.lua).
local function claim(owned, owner_key, owner, slot, owner_ttl_ms, reply, now_s)
    local id = reply[1]
    local attempts = (tonumber(reply[ATTEMPTS]) or 0) + 1
    reply[ATTEMPTS] = attempts
    redis.call('HSET', key('job', id), 'state', 'running', 'owner', owner, 'started_at', now_s,
        'attempts', attempts)
    if redis.call('HSET', owned, slot, id) == 1 and
            redis.call('SET', owner_key, '1', 'PX', owner_ttl_ms, 'NX') then
        redis.call('SADD', key('owners'), owner)
    end
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

-- `gid`: the consumer group of `types` ('' for '*' or a single type). A group's
-- consumer may leave its types out (the group's copy of the heads index knows
-- them): when they are needed after all, this returns NEED_TYPES and the
-- consumer asks again with them.
-- `check_held`: the slot may already hold a job (the reply to an earlier fetch
-- was lost); false right after this slot settled its run. `woke`: the first
-- fetch after the slot waited idle; when jobs remain in the list it took one
-- from, it wakes the next idle consumer (enqueue wakes only on empty lists).
local function take(owned, owner_key, owner, slot, owner_ttl_ms, prios, types, gid, now_s, woke)
    for _, prio in ipairs(prios) do
        local jtype, alone = oldest_type(prio, types, gid)
        while jtype do
            local id, more = pop_ready(prio, jtype, alone)
            if id then
                local reply = job_reply(id)
                if reply[2] then
                    if woke and (more or (more == nil and
                            redis.call('LLEN', key('ready', prio, jtype)) > 0)) then
                        wake(prio, jtype, 1)
                    end
                    return claim(owned, owner_key, owner, slot, owner_ttl_ms, reply, now_s)
                end
            end
            jtype, alone = oldest_type(prio, types, gid)
        end
    end
    return nil
end

local function fetch(owned, owner_key, owner, slot, owner_ttl_ms, prios, types, gid, now_s,
                     check_held, woke)
    if check_held then
        local held = redis.call('HGET', owned, slot)
        if held then
            return job_reply(held)
        end
    end
    local job = take(owned, owner_key, owner, slot, owner_ttl_ms, prios, types, gid, now_s, woke)
    if job == nil and gid ~= '' then
        local built = ensure_group(gid, types)
        if built == false then
            return NEED_TYPES
        elseif built then
            job = take(owned, owner_key, owner, slot, owner_ttl_ms, prios, types, gid, now_s, woke)
        end
    end
    if job then
        return job
    end
    if #types == 0 then
        return NEED_TYPES  -- to clear the stale tokens of its types
    end
    clear_stale_tokens(prios, types)
    return nil
end
