-- groups_prune: forget the consumer groups whose record expired (no consumer of
-- the group found its queues empty for GROUP_TTL, lib/fetch.lua): their copies
-- of the heads index and their place in groups:<type>, which every push to one
-- of their types would otherwise keep paying for. A group still in use is
-- rebuilt by its next fetch that finds nothing (lib/fetch.lua ensure_group).
--
-- KEYS[1]  group_types   hash gid -> the group's job types (JSON list)
-- Keys built from the prefix (lib/keys.lua): group:<gid>, groups:<type>,
--   gheads:<prio>:<gid>
--
-- ARGV[1]  prefix '{ns}'
--
-- Returns the number of groups forgotten.

--! include lib/keys.lua

local registry = redis.call('HGETALL', KEYS[1])
local forgotten = 0
for i = 1, #registry, 2 do
    local gid = registry[i]
    if redis.call('EXISTS', key('group', gid)) == 0 then
        for _, jtype in ipairs(cjson.decode(registry[i + 1])) do
            redis.call('SREM', key('groups', jtype), gid)
        end
        for _, prio in ipairs(PRIORITIES) do
            redis.call('DEL', key('gheads', prio, gid))
        end
        redis.call('HDEL', KEYS[1], gid)
        forgotten = forgotten + 1
    end
end
return forgotten
