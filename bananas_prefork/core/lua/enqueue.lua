-- enqueue: record a batch of jobs and queue (or schedule) each of them,
-- all or nothing, in the order given.
--
-- KEYS[1]  seq      counter giving every job its place in the global order
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>, queues, scheduled, scheduler:wake, done,
--   done:<start> (read)
--
-- ARGV[1]  prefix '{ns}'    ARGV[2] the number of jobs
-- then a sequence of records, packed so that what jobs share is sent once:
--   a header: '' (the mark), name (= job type), priority, kwargs JSON,
--     options JSON ('' for none), when: '' (now) | '+<seconds>' (delay) |
--     '@<epoch seconds>' (absolute time), check: '1' when the ids were given by
--     the caller (skip one that exists), '0' when generated (unique)
--   a job: id, args JSON; it takes the fields of the header before it
--
-- Returns the positions (1-based, in the batch) of the jobs skipped because a
-- job with that id already exists or came earlier in the batch (nothing is
-- changed for them); empty when every job was enqueued.
--
-- Wake-up tokens go only to lists that were empty: an idle consumer has seen
-- every list it serves empty, and one woken into a list that still holds
-- jobs wakes the next (lib/fetch.lua), so tokens on every push are not needed.

--! include lib/keys.lua
--! include lib/queue.lua
--! include lib/done.lua
--! include lib/jobs.lua

local RUN_MAX = 1000  -- ids per RPUSH

local now, now_s = redis_now()

-- The usual single job (a generated id, arguments only, ready now), without the
-- batch's loop and tables: what follows does the same for it, a few us slower.
if #ARGV == 11 and ARGV[9] == '0' and ARGV[8] == '' and ARGV[7] == '' and ARGV[6] == '{}' then
    local name, prio, id = ARGV[4], ARGV[5], ARGV[10]
    local seq_s = tostring(redis.call('INCR', KEYS[1]))
    redis.call('HSET', key('job', id), 'name', name, 'priority', prio, 'args', ARGV[11],
        'state', 'queued', 'seq', seq_s, 'enqueued_at', now_s)
    if push_ready(id, prio, name, seq_s, false) == 1 then
        redis.call('SADD', key('queues'), prio .. ':' .. name)
        wake(prio, name, 1)
    end
    return {}
end

local total = tonumber(ARGV[2])
local base = nil  -- seq before the batch: counted on the first job created, so that a
                  -- batch of existing ids changes nothing; skipped jobs leave gaps
local woken, fresh, skipped, seen = {}, {}, {}, {}
local name, prio, pair, kwargs, options, when, check, plain
local run, run_len, run_first = {}, 0, nil
local job_prefix = key('job', '')

local function flush_run()
    if run_len > 0 then
        if push_run(prio, name, run, run_first) then
            fresh[pair] = true
        end
        if fresh[pair] then
            woken[pair] = (woken[pair] or 0) + run_len
        end
        run, run_len = {}, 0
    end
end

local i, pos, argc = 3, 0, #ARGV
while i <= argc do
    local id = ARGV[i]
    if id == '' then
        flush_run()
        name, prio, kwargs, options, when = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
            ARGV[i + 5]
        check = ARGV[i + 6] == '1'
        -- the common job, written inline and lean: no attempts ('0') and no kwargs ('{}'),
        -- which readers take as their defaults (job.py)
        plain = when == '' and options == '' and kwargs == '{}'
        pair = prio .. ':' .. name
        i = i + 7
    else
        pos = pos + 1
        if check and (seen[id] or job_known(id)) then
            skipped[#skipped + 1] = pos
        else
            if check then
                seen[id] = true
            end
            if not base then
                base = redis.call('INCRBY', KEYS[1], total) - total
            end
            local seq_s = tostring(base + pos)
            local due = nil
            if plain then
                redis.call('HSET', job_prefix .. id, 'name', name, 'priority', prio,
                    'args', ARGV[i + 1], 'state', 'queued', 'seq', seq_s, 'enqueued_at', now_s)
            else
                due = record_job(id, name, prio, ARGV[i + 1], kwargs, options, when, seq_s,
                    now, now_s)
            end
            if due then
                schedule(id, due)
                woken[pair] = woken[pair] or 0
            else
                run_len = run_len + 1
                run[run_len] = id
                if run_len == 1 then
                    run_first = seq_s
                elseif run_len == RUN_MAX then
                    flush_run()
                end
            end
        end
        i = i + 2
    end
end
flush_run()
wake_all(woken)
return skipped
