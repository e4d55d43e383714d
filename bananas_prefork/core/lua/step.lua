-- step: settle a consumer slot's finished job and fetch its next one, in one
-- round trip. Either half may be skipped: a fresh slot only fetches, a
-- stopping slot only settles.
--
-- KEYS[1]  owned:<owner>   hash slot -> running job id
-- KEYS[2]  owner:<owner>   the owner's liveness key
-- Keys built from the prefix (lib/keys.lua): job:<id>, ready:<prio>:<type>,
--   heads:<prio>, wake:<prio>:<type>, owners, scheduled, scheduler:wake, dead,
--   done, done:<start>, gheads:<prio>:<gid>, groups:<type>, group:<gid>, group_types
--
-- ARGV[1]  prefix '{ns}'        ARGV[2]  owner           ARGV[3]  slot
-- ARGV[4]  owner ttl (ms)
-- ARGV[5]  settle mode: '' (nothing to settle) | succeeded | done | retry | dead
-- ARGV[6]  job id   ARGV[7] attempt   ARGV[8] result JSON or error text
-- ARGV[9]  traceback   ARGV[10] retry delay (s)
-- ARGV[11] how long what is left is kept (s): result_ttl, done_ttl or dead_ttl
-- ARGV[12] most dead jobs kept (dead_max)
-- ARGV[13] '0' not to fetch, '1' to fetch the next job, '2' to fetch it as the
--          first fetch after waiting idle (see lib/fetch.lua)
-- ARGV[14] the number P of priorities, then ARGV[15..14+P] the priorities in
--          the order they are served, then the consumer group id ('' for none: any
--          type, or one type; see lib/fetch.lua), then the job types ('*' alone:
--          any type; none: the group's, see lib/fetch.lua); separate arguments, so
--          that no call parses a list
--
-- Returns {settled, id, name, priority, args, kwargs, options, attempts, enqueued_at,
-- ready_at} with only {settled} when no job was fetched, and {settled, 'types'} when
-- the fetch needs the job types that were left out (ask again with them); settled
-- is as in lib/settle.lua ('' when nothing was settled).

--! include lib/keys.lua
--! include lib/queue.lua
--! include lib/done.lua
--! include lib/settle.lua
--! include lib/fetch.lua

local owned, owner_key = KEYS[1], KEYS[2]
local owner, slot = ARGV[2], ARGV[3]
local now, now_s = redis_now()

local settled = ''
if ARGV[5] ~= '' then
    settled = settle(owner, ARGV[6], ARGV[7], ARGV[5], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
        ARGV[12], now, now_s)
end
-- Settling frees the slot; when the same call fills it again, the new claim
-- overwrites the slot's entry, so it is deleted only if nothing is fetched.
local freed = settled == 1
if ARGV[13] == '0' then
    if freed then
        redis.call('HDEL', owned, slot)
    end
    return {settled}
end
local nprios = tonumber(ARGV[14])
local prios, types = {}, {}
for i = 1, nprios do
    prios[i] = ARGV[14 + i]
end
for i = 16 + nprios, #ARGV do
    types[#types + 1] = ARGV[i]
end
local job = fetch(owned, owner_key, owner, slot, ARGV[4], prios, types, ARGV[15 + nprios],
    now_s, not freed, ARGV[13] == '2')
if job == nil or job == NEED_TYPES then
    if freed then
        redis.call('HDEL', owned, slot)
    end
    return job and {settled, job} or {settled}
end
table.insert(job, 1, settled)
return job
