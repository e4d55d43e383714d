-- Settle the run of a job: succeeded, retry (scheduled with backoff) or dead.
-- Only the owner of that very run may settle it: a late call from a consumer
-- that lost the job (it was recovered and handed to someone else) changes
-- nothing.
--
-- Returns  1  settled (the caller then frees the owner's slot)
--          0  already settled by this owner (a retried call after a lost reply)
--         -1  not the owner of this run (nothing changed)

local function settle(owner, id, attempt, mode, payload, traceback, delay, ttl, now, now_s)
    local job = key('job', id)
    local cur = redis.call('HMGET', job, 'owner', 'attempts', 'state')
    if cur[1] ~= owner or cur[2] ~= attempt then
        return -1
    end
    if cur[3] ~= 'running' then
        return 0
    end
    -- Owner and attempt match a running job, so this slot holds exactly this run;
    -- the caller frees the slot (step.lua: unless a fetch refills it at once).
    if mode == 'succeeded' then
        if ttl == '0' then
            redis.call('DEL', job)
        else
            redis.call('HSET', job, 'state', 'succeeded', 'result', payload, 'finished_at', now_s)
            redis.call('EXPIRE', job, ttl)
        end
    elseif mode == 'retry' then
        local due = now + tonumber(delay)
        redis.call('HSET', job, 'state', 'failed', 'error', payload, 'traceback', traceback,
            'finished_at', now_s, 'due_at', tostring(due))
        schedule(id, due)
    else
        bury(id, payload, traceback, now, now_s, ttl)
    end
    return 1
end
