-- lock_release: delete a lock only if the caller holds it (compare-and-delete).
--
-- KEYS[1]  the lock key (scheduler:lock)
-- ARGV[1]  prefix '{ns}' (unused; every script takes it first)
-- ARGV[2]  the caller's token
--
-- Returns 1 when released, 0 when the lock was someone else's or gone.

if redis.call('GET', KEYS[1]) == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
