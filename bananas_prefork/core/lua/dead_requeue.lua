-- dead_requeue: send dead jobs back to the tail of their ready lists with a
-- fresh retry budget (an operator's "retry").
--
-- KEYS[1]  dead   zset job id -> time it died
-- KEYS[2]  seq    the global enqueue order
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2..] job ids
--
-- Returns the number of jobs requeued (ids not in the dead set are skipped; an id
-- whose record is not dead, expired or used again by a live job, only leaves the set).

--! include lib/keys.lua
--! include lib/queue.lua
--! include lib/jobs.lua

local _, now_s = redis_now()
local requeued = 0
local woken = {}
for i = 2, #ARGV do
    local id = ARGV[i]
    local job = key('job', id)
    if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HGET', job, 'state') == 'dead' then
        local f = redis.call('HMGET', job, 'name', 'priority')
        local seq = tostring(redis.call('INCR', KEYS[2]))
        redis.call('PERSIST', job)
        redis.call('HDEL', job, 'owner', 'result', 'finished_at', 'started_at', 'due_at')
        redis.call('HSET', job, 'state', 'queued', 'attempts', 0, 'redeliveries', 0, 'seq', seq,
            'ready_at', now_s)
        push_ready(id, f[2], f[1], seq, false)
        woken[f[2] .. ':' .. f[1]] = (woken[f[2] .. ':' .. f[1]] or 0) + 1
        requeued = requeued + 1
    end
end
wake_all(woken)
return requeued
