-- dead_remove: delete dead jobs and their records (an operator's "purge").
--
-- KEYS[1]  dead   zset job id -> time it died
-- Keys built from the prefix (lib/keys.lua): job:<id>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2..] job ids
--
-- Returns the number of dead jobs removed. An id in the dead set whose record is
-- not dead (it expired, or the id was used again by a live job) only leaves the set.

--! include lib/keys.lua

local removed = 0
for i = 2, #ARGV do
    local job = key('job', ARGV[i])
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 and
            redis.call('HGET', job, 'state') == 'dead' then
        redis.call('DEL', job)
        removed = removed + 1
    end
end
return removed
