-- lock_renew: extend a lock only if the caller still holds it (compare-and-extend).
--
-- KEYS[1]  the lock key (scheduler:lock)
-- ARGV[1]  prefix '{ns}' (unused; every script takes it first)
-- ARGV[2]  the caller's token   ARGV[3] lease (ms)
--
-- Returns 1 when renewed, 0 when the lock is someone else's or gone.

if redis.call('GET', KEYS[1]) == ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 1
end
return 0
