//! The Lua scripts of the Redis backend. Each runs atomically; the timed
//! ones read the server's clock (`TIME`), so client clocks never matter.
//! Redis 7 replicates scripts by their effects, so `TIME` before a write is
//! allowed.

use redis::Script;

#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) register: Script,
    pub(super) heartbeat: Script,
    pub(super) unregister: Script,
    pub(super) reap: Script,
    pub(super) snapshot: Script,
    pub(super) first_id: Script,
}

const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

// KEYS: members, node, events. ARGV: id, inc, info, lease_ms, maxlen.
const REGISTER: &str = "
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
local cur = redis.call('HGET', KEYS[2], 'inc')
if exp and cur and cur ~= ARGV[2] then
  if tonumber(exp) > now then
    return 'dup:' .. cur .. ':' .. (tonumber(exp) - now)
  end
  -- a predecessor whose lease passed but that nobody reaped yet
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'e', 'left', 'id', ARGV[1], 'inc', cur, 'r', 'expired')
  cur = false
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
if exp and cur then
  if redis.call('HGET', KEYS[2], 'info') ~= ARGV[3] then
    redis.call('HSET', KEYS[2], 'info', ARGV[3])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'e', 'updated', 'id', ARGV[1], 'inc', ARGV[2], 'info', ARGV[3])
  end
  return 'ok'
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'inc', ARGV[2], 'info', ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'e', 'joined', 'id', ARGV[1], 'inc', ARGV[2], 'info', ARGV[3])
return 'ok'
";

// KEYS: members, node, events. ARGV: id, inc, lease_ms, maxlen, info ('' = unchanged).
const HEARTBEAT: &str = "
local cur = redis.call('HGET', KEYS[2], 'inc')
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or not exp then return 'gone' end
if cur ~= ARGV[2] then return 'dup:' .. cur .. ':' .. math.max(0, tonumber(exp) - now) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
if ARGV[5] ~= '' and redis.call('HGET', KEYS[2], 'info') ~= ARGV[5] then
  redis.call('HSET', KEYS[2], 'info', ARGV[5])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'e', 'updated', 'id', ARGV[1], 'inc', ARGV[2], 'info', ARGV[5])
end
return 'ok'
";

// KEYS: members, node, events. ARGV: id, inc, maxlen.
const UNREGISTER: &str = "
if redis.call('HGET', KEYS[2], 'inc') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', 'left', 'id', ARGV[1], 'inc', ARGV[2], 'r', 'graceful')
return 1
";

// KEYS: members, events. ARGV: node key prefix, maxlen, batch.
const REAP: &str = "
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local inc = redis.call('HGET', key, 'inc') or ''
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', key)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', 'left', 'id', id, 'inc', inc, 'r', 'expired')
end
return #ids
";

// KEYS: members, events. ARGV: node key prefix. -> {last stream id, info...}
const SNAPSHOT: &str = "
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if #last > 0 then out[1] = last[1][1] end
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('HGET', ARGV[1] .. id, 'info')
  if info then table.insert(out, info) end
end
return out
";

// KEYS: events. -> the first entry's id, or '' when there is no stream.
const FIRST_ID: &str = "
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return '' end
return first[1][1]
";

impl Scripts {
    pub(super) fn new() -> Scripts {
        let timed = |body: &str| Script::new(&format!("{NOW}{body}"));
        Scripts {
            register: timed(REGISTER),
            heartbeat: timed(HEARTBEAT),
            unregister: Script::new(UNREGISTER),
            reap: timed(REAP),
            snapshot: Script::new(SNAPSHOT),
            first_id: Script::new(FIRST_ID),
        }
    }
}
