-- recover: give back every job an owner holds, at the front of its ready list,
-- when the owner is gone. A job that has lost its child max_redeliveries
-- times is a poison pill: it goes to the dead-letter set instead, but only when
-- it was the owner's only running job. One that shared its child with other
-- running jobs may be an innocent neighbour of the real culprit: it gets one
-- run alone first (its options say "solo"; the consumer runs it with no other
-- job beside it), so that only a job that kills its child on its own ends dead.
--
-- KEYS[1]  owned:<owner>   hash slot -> running job id
-- KEYS[2]  owner:<owner>   liveness key; while it exists the owner is alive
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>, owners, dead
--
-- ARGV[1]  prefix '{ns}'     ARGV[2] owner
-- ARGV[3]  '1': the caller knows the owner is gone (a supervisor that reaped it,
--          or the owner releasing itself); '0': only if its liveness key expired
-- ARGV[4]  '1': this counts as a lost run (redelivery); '0': returned unharmed
-- ARGV[5]  max redeliveries   ARGV[6] dead ttl (s)   ARGV[7] reason, for the dead letter
-- ARGV[8]  most dead jobs kept (dead_max)
--
-- Returns {requeued, buried}, or {-1, 0} when the owner is still alive.

--! include lib/keys.lua
--! include lib/queue.lua

local owned, owner_key, owner = KEYS[1], KEYS[2], ARGV[2]
if ARGV[3] ~= '1' and redis.call('EXISTS', owner_key) == 1 then
    return {-1, 0}
end
local now, now_s = redis_now()
local max_redeliveries = tonumber(ARGV[5])

-- Oldest first at the front: push the newest first.
local jobs = {}
for _, id in ipairs(redis.call('HVALS', owned)) do
    local f = redis.call('HMGET', key('job', id), 'owner', 'state', 'seq', 'priority', 'name')
    if f[1] == owner and f[2] == 'running' then
        jobs[#jobs + 1] = {id = id, seq = f[3] or '0', prio = f[4], name = f[5]}
    end
end
table.sort(jobs, function(a, b) return tonumber(a.seq) > tonumber(b.seq) end)

-- The next run of this job happens with no other job in its child.
local function run_alone(job)
    local options = redis.call('HGET', job, 'options')
    local decoded = (options and options ~= '') and cjson.decode(options) or {}
    decoded['solo'] = true
    redis.call('HSET', job, 'options', cjson.encode(decoded))
end

local requeued, buried = 0, 0
for _, j in ipairs(jobs) do
    local job = key('job', j.id)
    local lost = 0
    if ARGV[4] == '1' then
        lost = redis.call('HINCRBY', job, 'redeliveries', 1)
    end
    redis.call('HDEL', job, 'owner')
    if lost >= max_redeliveries and #jobs == 1 then
        bury(j.id, ARGV[7] .. ' (' .. lost .. ' times)', '', now, now_s, ARGV[6], ARGV[8])
        buried = buried + 1
    else
        if lost >= max_redeliveries then
            run_alone(job)
        end
        redis.call('HSET', job, 'state', 'queued', 'ready_at', now_s)
        push_ready(j.id, j.prio, j.name, j.seq, true)
        wake(j.prio, j.name, 1)
        requeued = requeued + 1
    end
end
redis.call('DEL', owned, owner_key)
redis.call('SREM', key('owners'), owner)
return {requeued, buried}
