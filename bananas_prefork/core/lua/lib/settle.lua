-- Settle the run of a job: succeeded, done (succeeded with nothing to keep), retry
-- (scheduled with backoff) or dead. Only the owner of that very run may settle it:
-- a late call from a consumer that lost the job (it was recovered and handed to
-- someone else) changes nothing.
--
-- What a finished job leaves behind is what someone may still read, no more
-- (docs/guarantees.md, "What stays in Redis"):
--   succeeded  its record cut to name, state, attempts, redeliveries (when any),
--              result and finish time, for `ttl` seconds (result_ttl; 0 keeps nothing)
--   done       no record, a note of its attempts and finish time (lib/done.lua),
--              for `ttl` seconds (done_ttl) after the slice it finished in
--   dead       the whole record, for `ttl` seconds (dead_ttl), at most `cap` of them
--
-- Returns  1  settled (the caller then frees the owner's slot)
--          0  already settled (a retried call after a lost reply)
--         -1  not the owner of this run (nothing changed)

local function settle(owner, id, attempt, mode, payload, traceback, delay, ttl, cap, now,
                      now_s)
    local job = key('job', id)
    local cur = redis.call('HMGET', job, 'owner', 'attempts', 'state', 'name', 'redeliveries')
    if cur[1] ~= owner or cur[2] ~= attempt then
        -- A retried call after a lost reply finds what the first one left: a cut
        -- record or a note, of the same attempt (every run has its own).
        local note = not cur[3] and done_note(id)
        if (cur[3] == 'succeeded' and cur[2] == attempt)
                or (note and note_of_attempt(note, attempt)) then
            return 0
        end
        return -1
    end
    if cur[3] ~= 'running' then
        return 0
    end
    -- Owner and attempt match a running job, so this slot holds exactly this run;
    -- the caller frees the slot (step.lua: unless a fetch refills it at once).
    local lost = cur[5] ~= false and cur[5] ~= '0' and cur[5] or nil
    if mode == 'done' then
        redis.call('DEL', job)
        if ttl ~= '0' then
            record_done(id, attempt, lost, ttl, now)
        end
    elseif mode == 'succeeded' then
        redis.call('DEL', job)
        if ttl ~= '0' then
            redis.call('HSET', job, 'name', cur[4], 'state', 'succeeded', 'attempts', attempt,
                'result', payload, 'finished_at', now_s)
            if lost then
                redis.call('HSET', job, 'redeliveries', lost)
            end
            redis.call('EXPIRE', job, ttl)
        end
    elseif mode == 'retry' then
        local due = now + tonumber(delay)
        redis.call('HSET', job, 'state', 'failed', 'error', payload, 'traceback', traceback,
            'finished_at', now_s, 'due_at', tostring(due))
        schedule(id, due)
    else
        bury(id, payload, traceback, now, now_s, ttl, cap)
    end
    return 1
end
