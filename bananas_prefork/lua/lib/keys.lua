-- Key templates and the clock, shared by every script.
-- key('ready', 'high', 'send_email') -> '{ns}:ready:high:send_email', mirroring
-- bananas_prefork/keys.py. ARGV[1] of every script is the prefix '{ns}'; all keys
-- of a namespace share that hash tag, so they live in one cluster slot.
local PREFIX = ARGV[1]

local function key(...)
    return table.concat({PREFIX, ...}, ':')
end

-- One clock for every machine: Redis' own.
local function redis_now()
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function split_csv(text)
    local out = {}
    for item in string.gmatch(text, '[^,]+') do
        out[#out + 1] = item
    end
    return out
end
