-- enqueue: record a batch of jobs and queue (or schedule) each of them,
-- all or nothing, in the order given.
--
-- KEYS[1]  seq      counter giving every job its place in the global order
-- KEYS[2]  queues   set of 'prio:type' pairs
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>, scheduled, scheduler:wake
--
-- ARGV[1]  prefix '{ns}'
-- then 7 values per job:
--   id, name (= job type), priority, args JSON, kwargs JSON, options JSON ('' for none),
--   when: '' (now) | '+<seconds>' (delay) | '@<epoch seconds>' (absolute time)
--
-- Returns one flag per job: 1 enqueued, 0 a job with that id already exists
-- or came earlier in the batch (nothing is changed for it).

--! include lib/keys.lua
--! include lib/queue.lua

local PER_JOB = 7
local now = redis_now()
local count = (#ARGV - 1) / PER_JOB
local flags = {}
local seen = {}
local new_jobs = 0
for i = 0, count - 1 do
    local id = ARGV[2 + i * PER_JOB]
    flags[i + 1] = 0
    if not seen[id] and redis.call('EXISTS', key('job', id)) == 0 then
        flags[i + 1] = 1
        new_jobs = new_jobs + 1
    end
    seen[id] = true
end
if new_jobs == 0 then
    return flags
end
local seq = redis.call('INCRBY', KEYS[1], new_jobs) - new_jobs
local woken = {}   -- 'prio:type' -> number of jobs made ready

for i = 0, count - 1 do
    local base = 2 + i * PER_JOB
    local id, name, prio = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    local job = key('job', id)
    if flags[i + 1] == 1 then
        seq = seq + 1
        local when = ARGV[base + 6]
        local due = now
        if string.sub(when, 1, 1) == '+' then
            due = now + tonumber(string.sub(when, 2))
        elseif string.sub(when, 1, 1) == '@' then
            due = tonumber(string.sub(when, 2))
        end
        local state = 'queued'
        if due > now then
            state = 'scheduled'
        end
        redis.call('HSET', job, 'name', name, 'priority', prio, 'args', ARGV[base + 3],
            'kwargs', ARGV[base + 4], 'state', state, 'attempts', 0, 'seq', seq,
            'enqueued_at', now)
        if ARGV[base + 5] ~= '' then
            redis.call('HSET', job, 'options', ARGV[base + 5])
        end
        if state == 'scheduled' then
            redis.call('HSET', job, 'due_at', due)
            schedule(id, due)
        else
            push_ready(id, prio, name, seq, false)
            local pair = prio .. ':' .. name
            woken[pair] = (woken[pair] or 0) + 1
        end
        redis.call('SADD', KEYS[2], prio .. ':' .. name)
    end
end

for pair, n in pairs(woken) do
    local colon = string.find(pair, ':', 1, true)
    wake(string.sub(pair, 1, colon - 1), string.sub(pair, colon + 1), n)
end
return flags
