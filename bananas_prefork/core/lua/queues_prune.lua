-- queues_prune: forget queues that are still empty, and their wake-up tokens. Keeps
-- the `queues` set (depth reports, status rows, metrics labels) to what is in use:
-- a one-off or mistyped task name does not stay forever. A queue used again is
-- added back by the next enqueue.
--
-- KEYS[1]  queues   set of 'prio:type' pairs
-- Keys built from the prefix (lib/keys.lua): ready:<prio>:<type>, wake:<prio>:<type>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2..] 'prio:type' pairs found empty a while ago
--
-- Returns the number of queues forgotten.

--! include lib/keys.lua

local forgotten = 0
for i = 2, #ARGV do
    local pair = ARGV[i]
    local colon = string.find(pair, ':', 1, true)
    local prio, jtype = string.sub(pair, 1, colon - 1), string.sub(pair, colon + 1)
    if redis.call('LLEN', key('ready', prio, jtype)) == 0 and
            redis.call('SREM', KEYS[1], pair) == 1 then
        redis.call('DEL', key('wake', prio, jtype))
        forgotten = forgotten + 1
    end
end
return forgotten
