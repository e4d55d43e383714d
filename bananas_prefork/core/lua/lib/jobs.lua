-- Creating jobs: shared by enqueue (a batch from a client) and periodic_fire
-- (one tick of a periodic entry).
--
-- job:<id>    the job's hash (fields in bananas_prefork/job.py)
-- queues      set of 'prio:type' pairs ever used
-- done, done:<start>   the notes of jobs that left no record (lib/done.lua)

-- Whether a job id is taken: by a record, or by the note of a job that succeeded
-- with nothing to keep (lib/done.lua), so a caller-given id stays taken while
-- either lasts.
local function job_known(id)
    return redis.call('EXISTS', key('job', id)) == 1 or done_note(id) ~= nil
end

-- Record one new job. Returns its due time when it is due later (the caller
-- schedules it), or nil when it is ready now (the caller queues it).
-- `when` is '' (now), '+<seconds>' (a delay) or '@<epoch seconds>'.
local function record_job(id, name, prio, args, kwargs, options, when, seq_s, now, now_s)
    local due = now
    if when ~= '' then
        local mark = string.sub(when, 1, 1)
        if mark == '+' then
            due = now + tonumber(string.sub(when, 2))
        else
            due = tonumber(string.sub(when, 2))
        end
    end
    local fields = {'name', name, 'priority', prio, 'args', args, 'kwargs', kwargs,
        'state', 'queued', 'attempts', '0', 'seq', seq_s, 'enqueued_at', now_s}
    local later = due > now
    if later then
        fields[10] = 'scheduled'
        fields[#fields + 1] = 'due_at'
        fields[#fields + 1] = tostring(due)
    end
    if options ~= '' then
        fields[#fields + 1] = 'options'
        fields[#fields + 1] = options
    end
    redis.call('HSET', key('job', id), unpack(fields))
    return later and due or nil
end

-- Record one new job and queue it, or schedule it when it is due later.
-- `woken` counts the jobs made ready per 'prio:type', for wake_all().
local function create_job(id, name, prio, args, kwargs, options, when, seq, now, now_s, woken)
    local seq_s = tostring(seq)
    local pair = prio .. ':' .. name
    local due = record_job(id, name, prio, args, kwargs, options, when, seq_s, now, now_s)
    if due then
        schedule(id, due)
        woken[pair] = woken[pair] or 0
    else
        push_ready(id, prio, name, seq_s, false)
        woken[pair] = (woken[pair] or 0) + 1
    end
end

-- Record the pairs used and wake idle consumers, once per pair.
local function wake_all(woken)
    for pair, n in pairs(woken) do
        redis.call('SADD', key('queues'), pair)
        if n > 0 then
            local colon = string.find(pair, ':', 1, true)
            wake(string.sub(pair, 1, colon - 1), string.sub(pair, colon + 1), n)
        end
    end
end
