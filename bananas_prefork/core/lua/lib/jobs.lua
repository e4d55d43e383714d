-- Creating jobs: shared by enqueue (a batch from a client) and periodic_fire
-- (one tick of a periodic entry).
--
-- job:<id>    the job's hash (fields in bananas_prefork/job.py)
-- queues      set of 'prio:type' pairs ever used

-- Record one new job and queue it, or schedule it when it is due later.
-- `when` is '' (now), '+<seconds>' (a delay) or '@<epoch seconds>'.
-- `woken` counts the jobs made ready per 'prio:type', for wake_all().
local function create_job(id, name, prio, args, kwargs, options, when, seq, now, now_s, woken)
    local job = key('job', id)
    local due = now
    local mark = string.sub(when, 1, 1)
    if mark == '+' then
        due = now + tonumber(string.sub(when, 2))
    elseif mark == '@' then
        due = tonumber(string.sub(when, 2))
    end
    local seq_s = tostring(seq)
    local pair = prio .. ':' .. name
    if due > now then
        redis.call('HSET', job, 'name', name, 'priority', prio, 'args', args, 'kwargs', kwargs,
            'state', 'scheduled', 'attempts', '0', 'seq', seq_s, 'enqueued_at', now_s,
            'due_at', tostring(due))
        schedule(id, due)
        woken[pair] = woken[pair] or 0
    else
        redis.call('HSET', job, 'name', name, 'priority', prio, 'args', args, 'kwargs', kwargs,
            'state', 'queued', 'attempts', '0', 'seq', seq_s, 'enqueued_at', now_s)
        push_ready(id, prio, name, seq_s, false)
        woken[pair] = (woken[pair] or 0) + 1
    end
    if options ~= '' then
        redis.call('HSET', job, 'options', options)
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
