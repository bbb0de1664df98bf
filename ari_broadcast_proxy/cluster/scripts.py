"""The server-side scripts that make every shared decision atomic in Redis (or Valkey).

Redis runs one script at a time, so each of these is one indivisible step: a claim is
checked and recorded at once, a deadline's verdict is taken once, and every write a leader
makes is fenced by its lease (the script checks that the lease still holds the leader's own
token, so a replica that lost the lease while paused changes nothing). Keys are given in
KEYS (all in one hash slot, see `Keys`), values in ARGV.
"""

from __future__ import annotations

__all__ = ["CLAIM", "END", "EXPIRE", "LEASE_RELEASE", "LEASE_RENEW", "OFFER", "SESSION", "SET_APPS"]

# A claim, as BroadcastCore.claim decides it: 0 = no such broadcast (Asterisk answers),
# 404 ended, 409 already claimed, 422 not offered to this application, 204 won.
# KEYS: record, recipients. ARGV: application, events channel, message when won.
CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state == 'ended' then return 404 end
if state ~= 'offered' then return 409 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 422 end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'winner', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 204
"""

# The leader records an offer (fenced), or records again one that Redis lost (restarted) with
# its winner if it had one. KEYS: lease, record, recipients, active. ARGV: token, channel
# id, offer (JSON), deadline (epoch ms), ttl ms, events channel, message, winner ('' for
# none), recipients...
OFFER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'state', 'offered', 'offer', ARGV[3], 'deadline', ARGV[4])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[2], 'state', 'claimed', 'winner', ARGV[8]) end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
for i = 9, #ARGV, 500 do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""

# The deadline passed on the leader (fenced): the verdict is taken once. Returns
# {'expired'} (TIMEOUT is now recorded), {'claimed', winner} (a claim came first),
# {'ended'} or {'fenced'} (this replica no longer leads). KEYS: lease, record, active.
# ARGV: token, channel id, linger ms, events channel, message.
EXPIRE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'fenced'} end
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'ended' then return {'ended'} end
if state and state ~= 'offered' then
  return {'claimed', redis.call('HGET', KEYS[2], 'winner')}
end
redis.call('HSET', KEYS[2], 'state', 'ended')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {'expired'}
"""

# A broadcast ended (hung up on offer, hand-over failed, the winner let go): late claims get
# 404 for `linger` ms. KEYS: record, active. ARGV: channel id, linger ms, events channel,
# message.
END = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'ended')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# The winner's StasisStart was seen: the claim is kept (409) for the session's life.
# KEYS: record, active. ARGV: channel id, session ttl ms, events channel, message.
SESSION = """
if redis.call('HGET', KEYS[1], 'state') == 'claimed' then
  redis.call('HSET', KEYS[1], 'state', 'session')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# Leadership: renew (or release) only the lease this replica holds. KEYS: lease.
# ARGV: token, ttl ms (renew) / events channel, message (release).
LEASE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# A replica says which applications are connected to it (and that it is alive).
# KEYS: its apps set, replicas. ARGV: replica id, ttl ms, now ms, events channel, message,
# apps...
SET_APPS = """
redis.call('DEL', KEYS[1])
for i = 6, #ARGV, 500 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3] + ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""
