-- step: settle a consumer slot's finished job and fetch its next one, in one
-- round trip. Either half may be skipped: a fresh slot only fetches, a
-- stopping slot only settles.
--
-- KEYS[1]  owned:<owner>   hash slot -> running job id
-- KEYS[2]  owner:<owner>   the owner's liveness key
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>, owners, scheduled, scheduler:wake, dead
--
-- ARGV[1]  prefix '{ns}'        ARGV[2]  owner           ARGV[3]  slot
-- ARGV[4]  owner ttl (ms)
-- ARGV[5]  settle mode: '' (nothing to settle) | succeeded | retry | dead
-- ARGV[6]  job id   ARGV[7] attempt   ARGV[8] result JSON or error text
-- ARGV[9]  traceback   ARGV[10] retry delay (s)   ARGV[11] result or dead ttl (s)
-- ARGV[12] '1' to fetch the next job, '0' not to
-- ARGV[13] priorities, comma separated, in the order they are served
-- ARGV[14] job types, comma separated, or '*'
--
-- Returns {settled, id, name, priority, args, kwargs, options, attempts, enqueued_at,
-- ready_at}
-- with only {settled} when no job was fetched; settled is as in lib/settle.lua
-- ('' when nothing was settled).

--! include lib/keys.lua
--! include lib/queue.lua
--! include lib/settle.lua
--! include lib/fetch.lua

local owned, owner_key = KEYS[1], KEYS[2]
local owner, slot = ARGV[2], ARGV[3]
local now, now_s = redis_now()

local settled = ''
if ARGV[5] ~= '' then
    settled = settle(owned, owner, slot, ARGV[6], ARGV[7], ARGV[5], ARGV[8], ARGV[9],
        ARGV[10], ARGV[11], now, now_s)
end
if ARGV[12] ~= '1' then
    return {settled}
end
local job = fetch(owned, owner_key, owner, slot, ARGV[4], split_csv(ARGV[13]),
    split_csv(ARGV[14]), now_s)
if job == nil then
    return {settled}
end
table.insert(job, 1, settled)
return job
