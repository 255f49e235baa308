//! The Lua scripts that make Quiver's writes conditional, so that a member which lost its
//! partitions can never undo the work of the member that has them now, and that a Redis which
//! lost acknowledged writes is noticed.
//!
//! They are loaded once per connection (`SCRIPT LOAD`) and sent as `EVALSHA`; a
//! Redis that restarted (and forgot them) answers `NOSCRIPT`, on which they are loaded again.

/// Writes one partition's shard of many entities, each unless its stored applied offset
/// (`o<partition>`) is greater (equal is a harmless rewrite), and refreshes the TTL.
///
/// `KEYS`: entity hashes. `ARGV[1]`: TTL (ms), `ARGV[2]`: partition, then per key its applied
/// offset and its encoded shard. Returns the 1-based indexes of the keys refused.
pub const WRITE_SHARDS: &str = r"
local ttl = ARGV[1]
local field = 'p' .. ARGV[2]
local ofield = 'o' .. ARGV[2]
local refused = {}
for i, key in ipairs(KEYS) do
  local offset = ARGV[1 + 2 * i]
  local current = tonumber(redis.call('HGET', key, ofield) or '-1')
  if tonumber(offset) < current then
    refused[#refused + 1] = i
  else
    redis.call('HSET', key, field, ARGV[2 + 2 * i], ofield, offset)
    redis.call('PEXPIRE', key, ttl)
  end
end
return refused
";

/// Records the claim of an offset range unless it starts below the partition's committed floor
/// or a recorded claim overlaps it.
///
/// `KEYS[1]`: the claims hash of a source partition (fields `<first>:<last>`, plus `through`,
/// the highest offset claimed, and `floor`, the offset below which everything is committed and
/// its claims deleted). `ARGV`: first, last, the claim's bytes, TTL (ms). Returns `{0, {}}` once
/// recorded, `{1, clashes}` with the bytes of the overlapping claims (nothing recorded), or
/// `{2, {}}` when the range starts below the floor: its offsets were committed by another member
/// after their claims were deleted, so the caller lost the partition and must not decide them.
/// Claims past `through` cannot overlap anything: the common case costs no scan.
pub const CLAIM: &str = r"
local first = tonumber(ARGV[1])
local last = tonumber(ARGV[2])
local name = ARGV[1] .. ':' .. ARGV[2]
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
if first < floor then
  return {2, {}}
end
local through = tonumber(redis.call('HGET', KEYS[1], 'through') or '-1')
if first > through then
  redis.call('HSET', KEYS[1], name, ARGV[3], 'through', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {0, {}}
end
local clash = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local a, b = string.match(f, '^(%d+):(%d+)$')
  if a and tonumber(a) <= last and tonumber(b) >= first then
    clash[#clash + 1] = redis.call('HGET', KEYS[1], f)
  end
end
if #clash > 0 then
  return {1, clash}
end
redis.call('HSET', KEYS[1], name, ARGV[3])
if last > through then
  redis.call('HSET', KEYS[1], 'through', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {0, {}}
";

/// Deletes the claims of committed offsets and moves the partition's floor, in one step: a
/// claim can never be deleted without the floor that refuses a late claim of its offsets.
///
/// `KEYS[1]`: the claims hash. `ARGV[1]`: the committed next offset, `ARGV[2]`: `raise` (after a
/// commit: the floor only rises) or `set` (at an assignment, from the group's committed offset:
/// below the floor only when the offsets went back — a reset, a recreated topic — and then the
/// old floor would refuse every claim of the partition's new history), `ARGV[3]`: TTL (ms), then
/// the fields to delete. The hash's TTL is refreshed: the floor lives as long as claims do.
pub const RELEASE_CLAIMS: &str = r"
for i = 4, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
if ARGV[2] == 'set' or tonumber(ARGV[1]) > floor then
  redis.call('HSET', KEYS[1], 'floor', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 0
";

/// Moves a partition's applied watermark of a view forward, after the shards of a flush are
/// written — unless Redis holds less than the writer last saw there: then Redis lost writes it
/// had acknowledged (a crash between two fsyncs, a failover to a replica that was behind), and
/// nothing is written.
///
/// `KEYS[1]`: the view's watermark hash. `ARGV`: partition, the flush's last offset, the value
/// the writer expects (`-1`: none known). Returns `{0, held}` when moved (or already past),
/// `{1, held}` when Redis is behind; `held` is `-1` when nothing was recorded.
pub const ADVANCE_APPLIED: &str = r"
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local expected = tonumber(ARGV[3])
if held < expected then
  return {1, held}
end
if tonumber(ARGV[2]) > held then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return {0, held}
";
