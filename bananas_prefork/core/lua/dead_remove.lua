-- dead_remove: delete dead jobs and their records (an operator's "purge").
--
-- KEYS[1]  dead   zset job id -> time it died
-- Keys built from the prefix (lib/keys.lua): job:<id>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2..] job ids
--
-- Returns the number of dead jobs removed.

--! include lib/keys.lua

local removed = 0
for i = 2, #ARGV do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
        redis.call('DEL', key('job', ARGV[i]))
        removed = removed + 1
    end
end
return removed
