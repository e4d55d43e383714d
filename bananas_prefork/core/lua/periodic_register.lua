-- periodic_register: declare one node's periodic entries, and forget what nodes
-- that are gone declared. An entry lives while some running master declares it:
-- a node is running while its status key (node:<id>) exists, which its master
-- publishes before it registers and withdraws when it stops.
--
-- KEYS[1]  periodic          hash name -> definition JSON
-- KEYS[2]  periodic:sources  hash 'name|node' -> the definition that node declares
-- KEYS[3]  periodic:next     zset name -> next tick (epoch ms)
-- Keys built from the prefix (lib/keys.lua): node:<id>
--
-- ARGV[1]  prefix '{ns}'   ARGV[2] this node ('' to forget only)
-- then 4 values per declared entry: name, definition JSON, tick mode ('keep': leave
--   the next tick alone; 'new': set it if there is none; 'reset': the schedule
--   changed), first tick (ms)
--
-- Returns the number of entries that left the schedule.

--! include lib/keys.lua

local node = ARGV[2]
local declared = {}
for i = 3, #ARGV, 4 do
    local name, definition, mode, tick = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    declared[name] = true
    redis.call('HSET', KEYS[1], name, definition)
    redis.call('HSET', KEYS[2], name .. '|' .. node, definition)
    if mode == 'reset' then
        redis.call('ZADD', KEYS[3], tick, name)
    elseif mode == 'new' then
        redis.call('ZADD', KEYS[3], 'NX', tick, name)
    end
end

local sources = redis.call('HGETALL', KEYS[2])
local gone = {}  -- node -> true when its master is not running
local still = {}  -- name -> true while some source declares it
for i = 1, #sources, 2 do
    local source = sources[i]
    local bar = string.find(source, '|[^|]*$')
    local name, by = string.sub(source, 1, bar - 1), string.sub(source, bar + 1)
    local drop = false
    if by == node then
        drop = not declared[name]
    else
        if gone[by] == nil then
            gone[by] = redis.call('EXISTS', key('node', by)) == 0
        end
        drop = gone[by]
    end
    if drop then
        redis.call('HDEL', KEYS[2], source)
    else
        still[name] = true
    end
end

local forgotten = 0
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not still[name] then
        redis.call('HDEL', KEYS[1], name)
        redis.call('ZREM', KEYS[3], name)
        forgotten = forgotten + 1
    end
end
return forgotten
