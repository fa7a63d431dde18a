"""The spool on Redis, for production: Lua scripts keep each step atomic across web processes and consumers.

What the methods promise is spool.Spool's; the limits (FEED_MAX_IDS and the
others) are read from spool when used, so that they are set in one place.

On one Redis or a Redis Cluster alike, every script and MULTI touches keys of
one hash slot: each shard of the writers' queues keeps all its keys (queues,
leases, batches, counts, flags, the projects' rate buckets and the counters
its pushes add) under one hash tag, {logflow:N}, and each project's live feed
under {project id}. The rest is one key per command. On one Redis, shard 0
keeps the names of versions before shards (logflow:db:queue...).
"""
import collections
import itertools
import math
import random
import time
import uuid

import redis
from redis.exceptions import RedisClusterException

import redis_url
import spool

# Claim a batch for writer KEYS: an expired lease first (its consumer died or
# its retry is due), else up to ARGV[2] items / ARGV[3] bytes from the queue.
# Returns {id, attempts, payloads, more}, or an empty table.
CLAIM_SCRIPT = """
local queue, leases, attempts, flag, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, lease = ARGV[1], tonumber(ARGV[4])
local max_items, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local id
local due = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 2)
if #due > 0 then
  id = due[1]
else
  id = ARGV[5]
  local batch = prefix .. id
  local count, size, records = 0, 0, 0
  while count < max_items and size < max_bytes do
    local item = redis.call('LMOVE', queue, batch, 'RIGHT', 'RIGHT')
    if not item then break end
    count, size = count + 1, size + #item
    records = records + (tonumber(string.match(item, '^{"count":(%d+)')) or 0)
  end
  if count == 0 then
    redis.call('DEL', flag)
    return {}
  end
  -- Only a batch that exists: ack removes the entry, and nothing acks an empty claim.
  redis.call('HSET', queued .. ':batches', id, records)
end
redis.call('ZADD', leases, now + lease, id)
local more = redis.call('LLEN', queue) > 0 or #due > 1
if more then
  redis.call('SET', flag, '1', 'EX', math.ceil(lease))
else
  redis.call('DEL', flag)
end
return {id, tonumber(redis.call('HGET', attempts, id) or '0'),
        redis.call('LRANGE', prefix .. id, 0, -1), more and 1 or 0}
"""

# Queue ARGV[1] (holding ARGV[2] records) on each writer's queue: KEYS come in
# threes (queue, scheduled flag, queued-records counter), then the project's
# token bucket, then the metrics hash, to which ARGV[8..] adds (field, amount) pairs. Refuses when a queue holds ARGV[3] records already (returns
# {1}) or the bucket lacks the tokens (returns {2, seconds to wait}); else
# returns {0, indexes of the writers whose flag it set}. The bucket admits a
# request once it holds min(records, burst) tokens and takes ARGV[7] of them,
# going into debt if it must: with shards, a shard's bucket holds its share
# of the project's burst, and a request larger than that share is charged in
# full, up to the whole burst, so that the shards together keep the rate.
PUSH_SCRIPT = """
local payload, records, max_queue = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local flag_ttl, rate, burst, charge = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local writers = (#KEYS - 2) / 3
if max_queue > 0 then
  for i = 1, writers do
    if (tonumber(redis.call('GET', KEYS[3 * i]) or '0') + records) > max_queue then
      return {1}
    end
  end
end
if rate > 0 then
  local bucket = KEYS[#KEYS - 1]
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = math.min(burst, (tonumber(state[1]) or burst) + (now - (tonumber(state[2]) or now)) * rate)
  -- A request larger than the burst waits for a full bucket rather than forever.
  local cost = math.min(records, burst)
  if tokens < cost then
    return {2, tostring((cost - tokens) / rate)}
  end
  local left = tokens - charge
  redis.call('HSET', bucket, 'tokens', tostring(left), 'at', tostring(now))
  -- Gone once full again: a missing bucket is a full one.
  redis.call('EXPIRE', bucket, math.ceil((burst - left) / rate) + 1)
end
for i = 8, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[#KEYS], ARGV[i], ARGV[i + 1])
end
local woken = {}
for i = 1, writers do
  redis.call('LPUSH', KEYS[3 * i - 2], payload)
  redis.call('INCRBY', KEYS[3 * i], records)
  if redis.call('SET', KEYS[3 * i - 1], '1', 'NX', 'EX', flag_ttl) then
    table.insert(woken, i)
  end
end
return {0, woken}
"""

# Put a failed batch back for a retry after ARGV[2] seconds and pause its
# writer (KEYS[3]) as long; returns the batch's attempts.
FAIL_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('SET', KEYS[3], '1', 'PX', math.floor(tonumber(ARGV[2]) * 1000) + 1)
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""

# Forget batch ARGV[1]: its list KEYS[1], the writer's failure streak KEYS[2],
# its lease and attempts (KEYS[3], KEYS[4]); its records leave the count of
# waiting records (KEYS[5]) only now, and only once if two consumers ack it.
ACK_SCRIPT = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('DEL', KEYS[1]) == 1 then
  local records = tonumber(redis.call('HGET', KEYS[5] .. ':batches', ARGV[1]) or '0')
  redis.call('DECRBY', KEYS[5], records)
end
redis.call('HDEL', KEYS[5] .. ':batches', ARGV[1])
"""

# Forget the record counts (in hash KEYS[1]) of the batch ids in ARGV that count
# 0 records and hold no lease (KEYS[2]): empty claims before 6420e63 left them,
# and nothing acknowledges them. Returns how many went.
FORGET_SCRIPT = """
local removed = 0
for i = 1, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == '0' and not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""

# If writer's leases (KEYS[1]) hold a batch and no wake-up is reserved
# (KEYS[2]), reserve one until that batch's lease ends; returns the delay.
WAKEUP_SCRIPT = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return false end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local delay = math.max(0, tonumber(first[2]) - now)
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', math.floor(delay * 1000) + 1) then
  return tostring(delay)
end
return false
"""


# Append ARGV[2] ids ARGV[1] to the live feed KEYS[1] and drop its entries older
# than ARGV[3] seconds or past ARGV[4] ids (KEYS[3] counts them), noting the last
# one dropped in KEYS[2]: a reader whose position is before it has missed entries
# (Redis's own trimming keeps no such mark). Ages by Redis's clock, as the entry ids.
PUBLISH_SCRIPT = """
local feed, trimmed, total = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local oldest_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) - tonumber(ARGV[3]) * 1000
local max_ids = tonumber(ARGV[4])
redis.call('XADD', feed, '*', 'ids', ARGV[1], 'n', ARGV[2])
local count = redis.call('INCRBY', total, tonumber(ARGV[2]))
if redis.call('XLEN', feed) == 1 then
  -- A new (or emptied) stream: the count starts again, should it ever have drifted.
  redis.call('SET', total, ARGV[2])
  count = tonumber(ARGV[2])
end
-- Drop the oldest entries while they are too old or too many ids are kept; never the newest.
while redis.call('XLEN', feed) > 1 do
  local first = redis.call('XRANGE', feed, '-', '+', 'COUNT', 1)[1]
  local ms = tonumber(string.match(first[1], '^(%d+)'))
  if count <= max_ids and ms >= oldest_ms then break end
  local n = 0
  for index = 1, #first[2], 2 do
    if first[2][index] == 'n' then n = tonumber(first[2][index + 1]) end
  end
  redis.call('XDEL', feed, first[1])
  count = redis.call('DECRBY', total, n)
  redis.call('SET', trimmed, first[1])
end
"""


@spool.reports_unavailable((redis.RedisError, RedisClusterException), "Redis")
class RedisSpool(spool.Spool):
    """The spool on Redis lists: per writer and shard, a queue, leased batch lists and a lease sorted set."""

    def __init__(self, url, lease_seconds, max_queue=0, shards=1, prefix="logflow", replicas=0, replicas_timeout=0.5):
        # redis_url.connect reads every form of REDIS_URL: with Sentinel the client follows the primary,
        # on a cluster each command goes to its slot's node. A hung Redis fails a request, never blocks it.
        self.client = redis_url.connect(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
        self.cluster = isinstance(self.client, redis_url.ClusterClient)
        self.lease_seconds = lease_seconds
        self.max_queue = max_queue
        self.shards = shards
        self.prefix = prefix
        # push() returns only once this many replicas have its records (Redis WAIT), within replicas_timeout s.
        self.replicas, self.replicas_timeout = replicas, replicas_timeout
        # Per rate-limited project (None for the others), this process's turn through the shards.
        self._turns = {}
        self._push = self.client.register_script(PUSH_SCRIPT)
        self._claim = self.client.register_script(CLAIM_SCRIPT)
        self._fail = self.client.register_script(FAIL_SCRIPT)
        self._wakeup = self.client.register_script(WAKEUP_SCRIPT)
        self._ack = self.client.register_script(ACK_SCRIPT)
        self._forget = self.client.register_script(FORGET_SCRIPT)
        self._publish = self.client.register_script(PUBLISH_SCRIPT)

    def _shard_prefix(self, shard):
        """The start of every key of one shard: its hash tag; on one Redis, shard 0 keeps the names before shards.

        So a queue written by an older version is shard 0's and is drained,
        with any number of shards; on a cluster, where no older version ran,
        every shard has its tag.
        """
        return self.prefix if shard == 0 and not self.cluster else "{%s:%d}" % (self.prefix, shard)

    def _key(self, writer, part, shard=0):
        return "%s:%s:%s" % (self._shard_prefix(shard), writer, part)

    def _shared(self, name):
        """A key of no shard (memos, epochs, counters added outside pushes...): each command touches one."""
        return "%s:%s" % (self.prefix, name)

    def _next_shard(self, project):
        """The shard of a push: a round robin per project in each process, from a random start.

        A project's requests then spread evenly, so each shard's share of its
        rate limit lasts as long as the others'; a client on one keep-alive
        connection (one web process) visits the shards in turn.
        """
        if self.shards == 1:
            return 0
        turns = self._turns.get(project)
        if turns is None:
            turns = self._turns.setdefault(project, itertools.count(random.randrange(self.shards)))
        return next(turns) % self.shards

    def push(self, payload, writers, records, limit=None, counters=()):
        shard = self._next_shard(limit.key if limit else None)
        keys = [self._key(writer, part, shard) for writer in writers
                for part in ("queue", "scheduled", "queued")]
        keys.append("%s:bucket:%s" % (self._shard_prefix(shard), limit.key if limit else "-"))
        keys.append(self._key("metrics", "counters", shard))
        # Each shard holds its share of the queue bound, and of the project's rate and burst.
        args = [payload, records, math.ceil(self.max_queue / self.shards), max(1, int(self.lease_seconds)),
                limit.rate / self.shards if limit else 0, limit.burst / self.shards if limit else 0,
                min(records, limit.burst) if limit else 0]
        args.extend(item for pair in counters for item in pair)
        result, confirmed = self._push_and_wait(keys, args)
        if result[0] == 1:
            raise spool.QueueFull()
        if result[0] == 2:
            raise spool.RateLimited(float(result[1]))
        woken = [(writers[index - 1], shard) for index in result[1]]
        if confirmed < self.replicas:
            raise spool.NotReplicated(woken, confirmed, self.replicas)
        return woken

    def _push_and_wait(self, keys, args):
        """The push script's result, and how many replicas confirmed it (0 when none are asked for).

        WAIT counts the replicas that have every write of its own connection:
        the script and the WAIT go together on one connection and cost one
        round trip. A missing script (a new primary has none) is loaded here.
        """
        if self.cluster:
            # The cluster client routes the script to its slot's node, following MOVED replies; it may
            # resend a push whose answer was lost (docs/scaling.md). No replicas to wait for (config refuses them).
            return self._push(keys=keys, args=args), 0
        commands = [("EVALSHA", self._push.sha, len(keys), *keys, *args)]
        if self.replicas:
            commands.append(("WAIT", self.replicas, max(1, round(self.replicas_timeout * 1000))))
        for attempt in (1, 2):
            try:
                replies = self._send_once(commands)
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(PUSH_SCRIPT)
                continue
            return replies[0], (replies[1] if self.replicas else 0)

    def _send_once(self, commands):
        """The replies to `commands`, sent together on one connection and never resent.

        redis-py's own retries would run a push again when its answer is lost.
        An error before sending (no connection, no primary named by the
        sentinels) is redis-py's: nothing ran. Once sending has begun, a broken
        connection or a timeout is spool.OutcomeUnknown: Redis may have run
        them. An error answer to the first command is raised as it is (the
        script wrote nothing: NOSCRIPT, NOREPLICAS, OOM...).
        """
        connection = self.client.connection_pool.get_connection()
        try:
            connection.check_health()
            try:
                connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                replies = [connection.read_response()]
                replies.extend(connection.read_response() for _ in commands[1:])
            except (redis.ConnectionError, redis.TimeoutError) as error:
                connection.disconnect()
                if isinstance(error.__context__, redis.exceptions.ReadOnlyError):
                    # redis-py's Sentinel connection turns a demoted primary's READONLY into this: nothing written.
                    raise
                raise spool.OutcomeUnknown("Redis: the push was sent, its answer lost: %s" % error) from error
            except redis.ResponseError:
                # The answers still due (WAIT's) would hold the connection: drop it instead.
                connection.disconnect()
                raise
            return replies
        finally:
            self.client.connection_pool.release(connection)

    def claim(self, writer, max_bytes, shard=0):
        keys = [self._key(writer, part, shard) for part in ("queue", "leases", "attempts", "scheduled", "queued")]
        args = [self._key(writer, "batch:", shard), spool.MAX_BATCH_ITEMS, max_bytes,
                self.lease_seconds, uuid.uuid4().hex]
        result = self._claim(keys=keys, args=args)
        if not result:
            return None
        batch_id, attempts, payloads, more = result
        return spool.Batch(batch_id.decode(), attempts, payloads, bool(more))

    def ack(self, writer, batch_id, shard=0):
        keys = [self._key(writer, part, shard) for part in
                ("batch:" + batch_id, "failures", "leases", "attempts", "queued")]
        self._ack(keys=keys, args=[batch_id])

    def count_failure(self, writer, shard=0):
        return self.client.incr(self._key(writer, "failures", shard))

    def fail(self, writer, batch_id, retry_in, shard=0):
        keys = [self._key(writer, part, shard) for part in ("leases", "attempts", "paused")]
        return int(self._fail(keys=keys, args=[batch_id, retry_in]))

    def _each_shard(self, command, shards=None):
        """command(pipeline, shard) for every shard (or those given), in one pipeline; their answers."""
        with self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.shards) if shards is None else shards:
                command(pipe, shard)
            return pipe.execute()

    def paused(self, writer, shard=None):
        left = self._each_shard(lambda pipe, shard: pipe.pttl(self._key(writer, "paused", shard)),
                                None if shard is None else [shard])
        return max(0, *left) / 1000

    def reserve_wakeup(self, writer, shard=0):
        keys = [self._key(writer, "leases", shard), self._key(writer, "wakeup", shard)]
        delay = self._wakeup(keys=keys)
        return None if delay is None else float(delay)

    def queued_records(self, writer):
        return sum(int(count or 0) for count in self._each_shard(
            lambda pipe, shard: pipe.get(self._key(writer, "queued", shard))))

    def remember(self, name, value, seconds):
        self.client.set(self._shared("memo:" + name), value, ex=max(1, int(seconds)))

    def recall(self, name):
        return self.client.get(self._shared("memo:" + name))

    def epoch(self, name):
        return int(self.client.get(self._shared("epoch:" + name)) or 0)

    def advance(self, name):
        return self.client.incr(self._shared("epoch:" + name))

    def strike(self, name, seconds):
        key = self._shared("strikes:" + name)
        # MULTI on one key: the expiry and the count go together (a cluster pipeline is not one by default).
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=max(1, math.ceil(seconds)), nx=True)
            pipe.incr(key)
            return pipe.execute()[1]

    def strikes(self, name):
        key = self._shared("strikes:" + name)
        with self.client.pipeline() as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, left = pipe.execute()
        return (int(count), max(0, left) / 1000) if count else (0, 0)

    def clear_strikes(self, name):
        self.client.delete(self._shared("strikes:" + name))

    def add_counters(self, counters):
        with self.client.pipeline(transaction=False) as pipe:
            for name, amount in counters:
                pipe.hincrby(self._shared("metrics:counters"), name, amount)
            pipe.execute()

    def counters(self):
        # Pushes count in their shard's hash (one slot per script), the rest in the shared one.
        hashes = dict.fromkeys([self._shared("metrics:counters")] +
                               [self._key("metrics", "counters", shard) for shard in range(self.shards)])
        totals = collections.Counter()
        with self.client.pipeline(transaction=False) as pipe:
            for key in hashes:
                pipe.hgetall(key)
            for counts in pipe.execute():
                totals.update({name.decode(): int(value) for name, value in counts.items()})
        return dict(totals)

    def oldest_received_at(self, writer):
        times = [spool.received_at_of(oldest) for oldest in self._each_shard(
            lambda pipe, shard: pipe.lindex(self._key(writer, "queue", shard), -1)) if oldest]
        # RFC 3339 times of one format: the earliest sorts first.
        return min((at for at in times if at), default=None)

    def depth(self, writer):
        return sum(self.client.llen(self._key(writer, "queue", shard)) + sum(
            self.client.llen(self._key(writer, "batch:" + batch_id.decode(), shard))
            for batch_id in self.client.zrange(self._key(writer, "leases", shard), 0, -1))
            for shard in range(self.shards))

    def replicas_required(self):
        """The primary's min-replicas-to-write; None when unknown (CONFIG disabled or renamed, Redis down)."""
        try:
            return int(self.client.config_get("min-replicas-to-write")["min-replicas-to-write"])
        except (redis.RedisError, KeyError, ValueError):
            return None

    def ping(self):
        """Raise SpoolUnavailable unless Redis answers."""
        self.client.ping()

    def forget_empty_claims(self, writer):
        """Clear the record counts that empty claims left in Redis before 6420e63; returns how many went."""
        removed = 0
        for shard in range(self.shards):
            counts, leases = self._key(writer, "queued", shard) + ":batches", self._key(writer, "leases", shard)
            cursor = None
            while cursor != 0:
                cursor, fields = self.client.hscan(counts, cursor or 0, count=1000)
                empty = [batch for batch, records in fields.items() if records == b"0"]
                if empty:
                    removed += self._forget(keys=[counts, leases], args=empty)
        return removed

    def _feed_key(self, project_id):
        # On a cluster, the feed's three keys share the project's hash tag.
        return ("%s:feed:{%d}" if self.cluster else "%s:feed:%d") % (self.prefix, project_id)

    def publish(self, written):
        # One stream entry per project and batch; PUBLISH_SCRIPT drops the oldest. A cluster's
        # pipeline runs no scripts: there, a call per project (a batch holds few projects).
        with self.client.pipeline(transaction=False) as pipe:
            for project_id, ids in written.items():
                key = self._feed_key(project_id)
                self._publish(keys=[key, key + ":trimmed", key + ":ids"],
                              args=[",".join(ids), len(ids), spool.FEED_SECONDS, spool.FEED_MAX_IDS],
                              client=None if self.cluster else pipe)
            pipe.execute()

    def feed_end(self, project_id):
        try:
            return self.client.xinfo_stream(self._feed_key(project_id))["last-generated-id"].decode()
        except redis.ResponseError:  # no such key: nothing was ever published
            return "0-0"

    def feed(self, project_id, after, inclusive, count):
        # The largest id has no id after it: an exclusive range from it is an error in Redis.
        if any(part >= 2 ** 64 - 1 for part in spool.stream_position(after)):
            raise ValueError("%r is not a position of this feed" % after)
        key = self._feed_key(project_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xrange(key, after if inclusive else "(" + after, "+", count=count)
            pipe.get(key + ":trimmed")
            entries, trimmed = pipe.execute()
        gap = self._gap(spool.stream_position(trimmed.decode()) if trimmed else None,
                        spool.stream_position(after), inclusive)
        return [(position.decode(), fields[b"ids"].decode().split(",")) for position, fields in entries], gap

    def beat(self, name, at):
        key = self._shared("consumers:heartbeats")
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {name: at})
            pipe.zremrangebyscore(key, "-inf", at - spool.HEARTBEATS_KEPT_SECONDS)
            pipe.execute()

    def heartbeats(self):
        # beat() forgets old beats only while some consumer still beats.
        return {name.decode(): at for name, at in
                self.client.zrangebyscore(self._shared("consumers:heartbeats"),
                                          time.time() - spool.HEARTBEATS_KEPT_SECONDS, "+inf", withscores=True)}

