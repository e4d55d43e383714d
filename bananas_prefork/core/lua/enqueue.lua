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
--! include lib/jobs.lua

local PER_JOB = 7
local now, now_s = redis_now()
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
local woken = {}
for i = 0, count - 1 do
    if flags[i + 1] == 1 then
        local base = 2 + i * PER_JOB
        seq = seq + 1
        create_job(ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4],
            ARGV[base + 5], ARGV[base + 6], seq, now, now_s, woken)
    end
end
wake_all(woken)
return flags
