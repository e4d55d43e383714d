-- promote: move due jobs from the scheduled set to their ready lists, one
-- bounded batch per call so Redis is never blocked for long. Fenced: only the
-- holder of the scheduler lock may promote, so a leader that lost its lease
-- (paused, cut off) cannot act.
--
-- KEYS[1]  scheduled        zset job id -> due time
-- KEYS[2]  scheduler:lock   the leader's token
-- KEYS[3]  seq              the global enqueue order
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2] the caller's lock token   ARGV[3] batch size
--
-- Returns {promoted, seconds until the next due job or -1 if none}, or
-- {-1, -1} when the caller does not hold the lock.

--! include lib/keys.lua
--! include lib/queue.lua
--! include lib/jobs.lua

if redis.call('GET', KEYS[2]) ~= ARGV[2] then
    return {-1, -1}
end
local now, now_s = redis_now()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local woken = {}
local promoted = 0
if #ids > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #ids - 1)
    local seq = redis.call('INCRBY', KEYS[3], #ids) - #ids
    for _, id in ipairs(ids) do
        local job = key('job', id)
        local f = redis.call('HMGET', job, 'name', 'priority')
        if f[1] then
            seq = seq + 1
            local seq_s = tostring(seq)
            redis.call('HSET', job, 'state', 'queued', 'seq', seq_s, 'ready_at', now_s)
            push_ready(id, f[2], f[1], seq_s, false)
            local pair = f[2] .. ':' .. f[1]
            woken[pair] = (woken[pair] or 0) + 1
            promoted = promoted + 1
        end
    end
end
wake_all(woken)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] == nil then
    return {promoted, '-1'}
end
return {promoted, tostring(math.max(0, tonumber(first[2]) - now))}
