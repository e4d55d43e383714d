-- periodic_fire: enqueue one tick of a periodic entry, exactly once across
-- leaders. The entry's next tick lives in Redis; this script advances it only
-- from the tick the caller saw (compare-and-set), and only for the holder of
-- the scheduler lock (fencing). A new leader therefore continues where the old
-- one stopped: it never runs a tick twice and never silently skips one.
--
-- KEYS[1]  scheduler:lock   the leader's token
-- KEYS[2]  periodic:next    zset entry name -> its next tick (epoch ms)
-- KEYS[3]  seq              the global enqueue order
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>, queues, done, done:<start> (read)
--
-- ARGV[1]  prefix '{ns}'   ARGV[2] the caller's lock token   ARGV[3] entry name
-- ARGV[4]  the tick the caller saw (ms)   ARGV[5] the tick after it (ms)
-- ARGV[6]  '1' to enqueue a job for this tick, '0' to skip it (missed, no catch-up)
-- ARGV[7..11] the job: id, task name, priority, args JSON, kwargs JSON
--
-- Returns 1 when advanced, 0 when another call already advanced this tick,
-- -1 when the caller does not hold the lock.

--! include lib/keys.lua
--! include lib/queue.lua
--! include lib/done.lua
--! include lib/jobs.lua

if redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return -1
end
local seen = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not seen or tonumber(seen) ~= tonumber(ARGV[4]) then
    return 0
end
if ARGV[6] == '1' and not job_known(ARGV[7]) then
    local woken = {}
    local now, now_s = redis_now()
    create_job(ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], '', '',
        redis.call('INCR', KEYS[3]), now, now_s, woken)
    wake_all(woken)
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
return 1
