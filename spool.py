"""The spool: durable per-writer queues of accepted records, handed out in leased batches.

Huey's own queue delivers at most once, so records do not travel in Huey
messages. The web process appends each request's records to one queue per
writer; a consumer claims a batch, writes it, then acknowledges it. A batch
whose consumer died, or whose write failed, comes back once its lease (or its
retry delay) runs out: delivery is at least once, and the writers make
redelivery harmless.

Each queue also carries a "scheduled" flag so that a burst of requests wakes
the consumer with one Huey task instead of one per request, and a "wakeup"
flag so that at most one Huey task waits for the next lease to run out.

Two backends with the same methods: Redis in production, SQLite in dev mode.
"""
import collections
import functools
import inspect
import math
import os
import re
import sqlite3
import threading
import time
import uuid

import orjson
import redis

import models

Batch = collections.namedtuple("Batch", "id attempts payloads more")

# Claim at most this many queued requests at once, whatever their size.
MAX_BATCH_ITEMS = 1000
# Consumers' heartbeats older than this are forgotten (see beat()).
HEARTBEATS_KEPT_SECONDS = 86400
# The epoch of key lookups: manage.py advances it after committing any change to
# a key or a project, so that lookups cached before it (logflow.KeyCache) are
# no longer trusted during a database outage.
KEY_EPOCH = "keys"
# How long each project's live feed keeps the ids the database writer stored,
# and how many at most (about 40 bytes each: 8 MB a project): a viewer whose
# connection dropped for less resumes without a gap, one away for longer (or
# under a flood past FEED_MAX_IDS a poll) is told, and reads the list again.
FEED_SECONDS = 300
FEED_MAX_IDS = 200_000


class SpoolUnavailable(Exception):
    """The spool's store cannot be reached: nothing was queued."""


class QueueFull(Exception):
    """A writer has LOGFLOW_MAX_QUEUE records waiting (queued or unacknowledged): nothing was queued."""


class RateLimited(Exception):
    """The project spent its records per second: nothing was queued; retry after `retry_after` s."""

    def __init__(self, retry_after):
        super().__init__("rate limited; retry after %.1f s" % retry_after)
        self.retry_after = retry_after


Limit = collections.namedtuple("Limit", "key rate burst")


def encode(project, received_at, records, encoded=None):
    """One request's records as a spool payload (JSON, the record count first).

    With `encoded`, the caller's JSON list of the records, `records` is only their count.
    """
    # The count leads so the Redis claim script can read it without a JSON parser.
    return b'{"count":%d,"project":%s,"received_at":%s,"records":%s}' % (
        len(records) if encoded is None else records, orjson.dumps(project), orjson.dumps(received_at),
        orjson.dumps(records) if encoded is None else encoded)


def received_at_of(payload):
    """The received_at of a payload, read without parsing all of it."""
    match = re.search(rb'"received_at":"([^"]+)"', payload[:200])
    return match.group(1).decode() if match else None


def decode(payloads):
    """The (project id, received_at, record) items of a batch of spool payloads."""
    items = []
    for payload in payloads:
        request = orjson.loads(payload)
        items.extend((request["project"], request["received_at"], record)
                     for record in request["records"])
    return items


def stream_position(text):
    """A Redis stream entry id as a comparable pair of integers; ValueError if it is not one."""
    milliseconds, _, sequence = text.partition("-")
    if not (milliseconds.isdigit() and (sequence.isdigit() or not sequence)):
        raise ValueError("%r is not a Redis stream entry id" % text)
    return int(milliseconds), int(sequence or 0)


def reports_unavailable(errors, store):
    """Class decorator: in every public method, the store's own errors become SpoolUnavailable.

    Callers then handle one error, whichever backend is behind the spool and
    whichever method failed.
    """
    def translating(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except errors as error:
                raise SpoolUnavailable("%s: %s" % (store, error)) from error
        return wrapper

    def decorate(cls):
        for name, method in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(method):
                setattr(cls, name, translating(method))
        return cls
    return decorate


def open_spool(settings):
    """The spool the settings name: Redis if REDIS_URL is set, else SQLite in the data folder."""
    if settings.redis_url:
        return RedisSpool(settings.redis_url, settings.lease_seconds, settings.max_queue)
    return SqliteSpool(os.path.join(settings.data_dir, "spool.db"), settings.lease_seconds,
                       settings.max_queue)


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
# token bucket, then the metrics hash, to which ARGV[7..] adds (field, amount) pairs. Refuses when a queue holds ARGV[3] records already (returns
# {1}) or the bucket lacks the tokens (returns {2, seconds to wait}); else
# returns {0, indexes of the writers whose flag it set}.
PUSH_SCRIPT = """
local payload, records, max_queue = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local flag_ttl, rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
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
  redis.call('HSET', bucket, 'tokens', tostring(tokens - cost), 'at', tostring(now))
  redis.call('EXPIRE', bucket, math.ceil(burst / rate) + 1)
end
for i = 7, #ARGV, 2 do
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


@reports_unavailable(redis.RedisError, "Redis")
class RedisSpool:
    """The spool on Redis lists: a queue, leased batch lists and a lease sorted set per writer."""

    def __init__(self, url, lease_seconds, max_queue=0, prefix="logflow"):
        self.client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
        self.lease_seconds = lease_seconds
        self.max_queue = max_queue
        self.prefix = prefix
        self._push = self.client.register_script(PUSH_SCRIPT)
        self._claim = self.client.register_script(CLAIM_SCRIPT)
        self._fail = self.client.register_script(FAIL_SCRIPT)
        self._wakeup = self.client.register_script(WAKEUP_SCRIPT)
        self._ack = self.client.register_script(ACK_SCRIPT)
        self._forget = self.client.register_script(FORGET_SCRIPT)
        self._publish = self.client.register_script(PUBLISH_SCRIPT)

    def _key(self, writer, part):
        return "%s:%s:%s" % (self.prefix, writer, part)

    def push(self, payload, writers, records, limit=None, counters=()):
        """Queue one payload of `records` records for each writer, all or none; returns the writers to wake.

        Adds the (name, amount) `counters` with it. Raises QueueFull, RateLimited
        (when `limit`, a Limit, is spent) or SpoolUnavailable.
        """
        keys = [self._key(writer, part) for writer in writers
                for part in ("queue", "scheduled", "queued")]
        keys.append("%s:bucket:%s" % (self.prefix, limit.key if limit else "-"))
        keys.append(self._key("metrics", "counters"))
        args = [payload, records, self.max_queue, max(1, int(self.lease_seconds)),
                limit.rate if limit else 0, limit.burst if limit else 0]
        args.extend(item for pair in counters for item in pair)
        result = self._push(keys=keys, args=args)
        if result[0] == 1:
            raise QueueFull()
        if result[0] == 2:
            raise RateLimited(float(result[1]))
        return [writers[index - 1] for index in result[1]]

    def claim(self, writer, max_bytes):
        """Lease the next batch for a writer; None when there is nothing to do."""
        keys = [self._key(writer, part) for part in ("queue", "leases", "attempts", "scheduled", "queued")]
        args = [self._key(writer, "batch:"), MAX_BATCH_ITEMS, max_bytes,
                self.lease_seconds, uuid.uuid4().hex]
        result = self._claim(keys=keys, args=args)
        if not result:
            return None
        batch_id, attempts, payloads, more = result
        return Batch(batch_id.decode(), attempts, payloads, bool(more))

    def ack(self, writer, batch_id):
        """Forget a batch every record of which has been written; the writer's failure streak ends."""
        keys = [self._key(writer, part) for part in
                ("batch:" + batch_id, "failures", "leases", "attempts", "queued")]
        self._ack(keys=keys, args=[batch_id])

    def count_failure(self, writer):
        """Count one more failed write in a row for the writer; returns the streak."""
        return self.client.incr(self._key(writer, "failures"))

    def fail(self, writer, batch_id, retry_in):
        """Give a batch back for a retry in retry_in seconds, pausing its writer as long; returns its attempts."""
        keys = [self._key(writer, "leases"), self._key(writer, "attempts"), self._key(writer, "paused")]
        return int(self._fail(keys=keys, args=[batch_id, retry_in]))

    def paused(self, writer):
        """Seconds the writer stays paused after a failure; 0 when it may write."""
        return max(0, self.client.pttl(self._key(writer, "paused"))) / 1000

    def reserve_wakeup(self, writer):
        """Seconds until the earliest leased batch comes back, if no wake-up for it is reserved yet."""
        keys = [self._key(writer, "leases"), self._key(writer, "wakeup")]
        delay = self._wakeup(keys=keys)
        return None if delay is None else float(delay)

    def queued_records(self, writer):
        """Records waiting for a writer: queued, or in batches not yet acknowledged."""
        return int(self.client.get(self._key(writer, "queued")) or 0)

    def remember(self, name, value, seconds):
        """Keep a small value under a name for `seconds`, for every process to read."""
        self.client.set("%s:memo:%s" % (self.prefix, name), value, ex=max(1, int(seconds)))

    def recall(self, name):
        """The value remembered under a name, or None."""
        return self.client.get("%s:memo:%s" % (self.prefix, name))

    def epoch(self, name):
        """How many times the named epoch was advanced; 0 before the first time."""
        return int(self.client.get("%s:epoch:%s" % (self.prefix, name)) or 0)

    def advance(self, name):
        """Advance the named epoch by one; returns its new value."""
        return self.client.incr("%s:epoch:%s" % (self.prefix, name))

    def strike(self, name, seconds):
        """Count one more strike (a failed sign-in, say) against a name; the count lapses `seconds` after the first. Returns it."""
        key = "%s:strikes:%s" % (self.prefix, name)
        with self.client.pipeline() as pipe:  # MULTI: the expiry and the count go together
            pipe.set(key, 0, ex=max(1, math.ceil(seconds)), nx=True)
            pipe.incr(key)
            return pipe.execute()[1]

    def strikes(self, name):
        """(strikes against a name, seconds until they lapse); (0, 0) when there are none."""
        key = "%s:strikes:%s" % (self.prefix, name)
        with self.client.pipeline() as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, left = pipe.execute()
        return (int(count), max(0, left) / 1000) if count else (0, 0)

    def clear_strikes(self, name):
        """Forget the strikes against a name."""
        self.client.delete("%s:strikes:%s" % (self.prefix, name))

    def add_counters(self, counters):
        """Add (name, amount) pairs to the counters every process shares."""
        with self.client.pipeline(transaction=False) as pipe:
            for name, amount in counters:
                pipe.hincrby(self._key("metrics", "counters"), name, amount)
            pipe.execute()

    def counters(self):
        """Every shared counter, by name."""
        return {name.decode(): int(value) for name, value in
                self.client.hgetall(self._key("metrics", "counters")).items()}

    def oldest_received_at(self, writer):
        """received_at of the request that has waited longest in a writer's queue, or None."""
        oldest = self.client.lindex(self._key(writer, "queue"), -1)
        return received_at_of(oldest) if oldest else None

    def depth(self, writer):
        """Requests waiting for a writer, queued or in leased batches."""
        return self.client.llen(self._key(writer, "queue")) + sum(
            self.client.llen(self._key(writer, "batch:" + batch_id.decode()))
            for batch_id in self.client.zrange(self._key(writer, "leases"), 0, -1))

    def ping(self):
        """Raise SpoolUnavailable unless Redis answers."""
        self.client.ping()

    def forget_empty_claims(self, writer):
        """Clear the record counts that empty claims left in Redis before 6420e63; returns how many went."""
        counts, leases = self._key(writer, "queued") + ":batches", self._key(writer, "leases")
        removed, cursor = 0, 0
        while True:
            cursor, fields = self.client.hscan(counts, cursor, count=1000)
            empty = [batch for batch, records in fields.items() if records == b"0"]
            if empty:
                removed += self._forget(keys=[counts, leases], args=empty)
            if not cursor:
                return removed

    def _feed_key(self, project_id):
        return "%s:feed:%d" % (self.prefix, project_id)

    def publish(self, written):
        """Append the ids the database writer just stored to each project's live feed: {project id: [id, ...]}.

        One stream entry per project and batch; the oldest go as new ones come (FEED_SECONDS, FEED_MAX_IDS).
        """
        with self.client.pipeline(transaction=False) as pipe:
            for project_id, ids in written.items():
                key = self._feed_key(project_id)
                self._publish(keys=[key, key + ":trimmed", key + ":ids"],
                              args=[",".join(ids), len(ids), FEED_SECONDS, FEED_MAX_IDS], client=pipe)
            pipe.execute()

    def feed_end(self, project_id):
        """The position of the project's latest feed entry: reading after it gives only what comes next."""
        try:
            return self.client.xinfo_stream(self._feed_key(project_id))["last-generated-id"].decode()
        except redis.ResponseError:  # no such key: nothing was ever published
            return "0-0"

    def feed(self, project_id, after, inclusive, count):
        """Up to `count` feed entries from position `after` on, oldest first, as [(position, [id, ...])]; and
        whether entries after `after` were trimmed away before they were read (a gap)."""
        # The largest id has no id after it: an exclusive range from it is an error in Redis.
        if any(part >= 2 ** 64 - 1 for part in stream_position(after)):
            raise ValueError("%r is not a position of this feed" % after)
        key = self._feed_key(project_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xrange(key, after if inclusive else "(" + after, "+", count=count)
            pipe.get(key + ":trimmed")
            entries, trimmed = pipe.execute()
        # Reading from inside an entry (inclusive), that entry's being dropped is a gap too.
        gap = bool(trimmed) and (stream_position(trimmed.decode()) >= stream_position(after) if inclusive
                                 else stream_position(trimmed.decode()) > stream_position(after))
        return [(position.decode(), fields[b"ids"].decode().split(",")) for position, fields in entries], gap

    def beat(self, name, at):
        """Record that consumer `name` was alive at `at` (epoch seconds); forgets beats a day old."""
        key = self._key("consumers", "heartbeats")
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {name: at})
            pipe.zremrangebyscore(key, "-inf", at - HEARTBEATS_KEPT_SECONDS)
            pipe.execute()

    def heartbeats(self):
        """{consumer name: epoch seconds of its last heartbeat} over the last day."""
        # beat() forgets old beats only while some consumer still beats.
        return {name.decode(): at for name, at in
                self.client.zrangebyscore(self._key("consumers", "heartbeats"),
                                          time.time() - HEARTBEATS_KEPT_SECONDS, "+inf", withscores=True)}


@reports_unavailable((sqlite3.Error, OSError), "SQLite spool")
class SqliteSpool:
    """The spool in one SQLite table; rows with a batch id are leased until their deadline."""

    schema = (
        "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " writer TEXT NOT NULL, payload BLOB NOT NULL, records INTEGER NOT NULL, batch TEXT,"
        " deadline REAL, attempts INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS spool_writer_batch ON spool (writer, batch, id)",
        "CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, expires REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS queued (writer TEXT PRIMARY KEY, records INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS streaks (writer TEXT PRIMARY KEY, failures INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS memos (name TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS heartbeats (name TEXT PRIMARY KEY, at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS epochs (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS strikes (name TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS feed (position INTEGER PRIMARY KEY AUTOINCREMENT, project INTEGER NOT NULL,"
        " ids TEXT NOT NULL, n INTEGER NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS feed_project ON feed (project, position)",
        # Per project, the last feed position trimmed away: reading from before it misses entries.
        "CREATE TABLE IF NOT EXISTS feed_trimmed (project INTEGER PRIMARY KEY, position INTEGER NOT NULL)",
    )

    # How long a statement waits for another connection's lock.
    timeout_seconds = models.SQLITE_TIMEOUT_SECONDS

    def __init__(self, path, lease_seconds, max_queue=0):
        self.path = path
        self.lease_seconds = lease_seconds
        self.max_queue = max_queue
        self._local = threading.local()
        # Dev mode runs on one machine: each process keeps its own token buckets.
        self._buckets = {}
        self._buckets_lock = threading.Lock()

    def _connection(self):
        # One connection per thread and per process: gunicorn and huey fork.
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self.timeout_seconds, isolation_level=None)
            models.use_wal(connection, self.timeout_seconds)
            connection.execute("PRAGMA synchronous=normal")
            for statement in self.schema:
                connection.execute(statement)
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _transaction(self, work):
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection, time.time())
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def push(self, payload, writers, records, limit=None, counters=()):
        """Queue one payload of `records` records for each writer, all or none; returns the writers to wake.

        Adds the (name, amount) `counters` with it. Raises QueueFull, RateLimited
        (when `limit`, a Limit, is spent) or SpoolUnavailable.
        """
        def work(connection, now):
            if self.max_queue and any(
                    self._queued(connection, writer) + records > self.max_queue for writer in writers):
                raise QueueFull()
            if limit:
                self._take_tokens(limit, records, now)
            woken = []
            for writer in writers:
                connection.execute("INSERT INTO spool (writer, payload, records) VALUES (?, ?, ?)",
                                   (writer, payload, records))
                connection.execute(
                    "INSERT INTO queued VALUES (?, ?) ON CONFLICT (writer)"
                    " DO UPDATE SET records = records + excluded.records", (writer, records))
                if self._set_flag(connection, writer + ":scheduled", now, now + self.lease_seconds):
                    woken.append(writer)
            self._add(connection, counters)
            return woken
        return self._transaction(work)

    @staticmethod
    def _add(connection, counters):
        connection.executemany(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name)"
            " DO UPDATE SET value = value + excluded.value", counters)

    def remember(self, name, value, seconds):
        """Keep a small value under a name for `seconds`, for every process to read."""
        self._transaction(lambda connection, now: connection.execute(
            "INSERT OR REPLACE INTO memos VALUES (?, ?, ?)", (name, value, now + seconds)))

    def recall(self, name):
        """The value remembered under a name, or None."""
        row = self._connection().execute("SELECT value FROM memos WHERE name = ? AND expires > ?",
                                         (name, time.time())).fetchone()
        return row[0] if row else None

    def epoch(self, name):
        """How many times the named epoch was advanced; 0 before the first time."""
        row = self._connection().execute("SELECT value FROM epochs WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def advance(self, name):
        """Advance the named epoch by one; returns its new value."""
        return self._transaction(lambda connection, now: connection.execute(
            "INSERT INTO epochs VALUES (?, 1) ON CONFLICT (name) DO UPDATE"
            " SET value = value + 1 RETURNING value", (name,)).fetchone()[0])

    def strike(self, name, seconds):
        """Count one more strike (a failed sign-in, say) against a name; the count lapses `seconds` after the first. Returns it."""
        def work(connection, now):
            # Lapsed strikes go here, so the table holds only the last `seconds` of names.
            connection.execute("DELETE FROM strikes WHERE expires <= ?", (now,))
            return connection.execute(
                "INSERT INTO strikes VALUES (?, 1, ?) ON CONFLICT (name) DO UPDATE SET count = count + 1"
                " RETURNING count", (name, now + seconds)).fetchone()[0]
        return self._transaction(work)

    def strikes(self, name):
        """(strikes against a name, seconds until they lapse); (0, 0) when there are none."""
        now = time.time()
        row = self._connection().execute("SELECT count, expires FROM strikes WHERE name = ? AND expires > ?",
                                         (name, now)).fetchone()
        return (row[0], row[1] - now) if row else (0, 0)

    def clear_strikes(self, name):
        """Forget the strikes against a name."""
        self._transaction(lambda connection, now: connection.execute("DELETE FROM strikes WHERE name = ?", (name,)))

    def add_counters(self, counters):
        """Add (name, amount) pairs to the counters every process shares."""
        self._transaction(lambda connection, now: self._add(connection, counters))

    def counters(self):
        """Every shared counter, by name."""
        return dict(self._connection().execute("SELECT name, value FROM counters"))

    def oldest_received_at(self, writer):
        """received_at of the request that has waited longest in a writer's queue, or None."""
        row = self._connection().execute(
            "SELECT payload FROM spool WHERE writer = ? AND batch IS NULL ORDER BY id LIMIT 1",
            (writer,)).fetchone()
        return received_at_of(row[0]) if row else None

    @staticmethod
    def _queued(connection, writer):
        row = connection.execute("SELECT records FROM queued WHERE writer = ?", (writer,)).fetchone()
        return row[0] if row else 0

    def _take_tokens(self, limit, records, now):
        """The Redis script's token bucket, in this process."""
        with self._buckets_lock:
            tokens, then = self._buckets.get(limit.key, (limit.burst, now))
            tokens = min(limit.burst, tokens + (now - then) * limit.rate)
            cost = min(records, limit.burst)
            if tokens < cost:
                raise RateLimited((cost - tokens) / limit.rate)
            self._buckets[limit.key] = (tokens - cost, now)

    def queued_records(self, writer):
        """Records waiting for a writer: queued, or in batches not yet acknowledged."""
        return self._queued(self._connection(), writer)

    def claim(self, writer, max_bytes):
        """Lease the next batch for a writer; None when there is nothing to do."""
        def work(connection, now):
            due = connection.execute(
                "SELECT DISTINCT batch FROM spool WHERE writer = ? AND batch IS NOT NULL"
                " AND deadline <= ? LIMIT 2", (writer, now)).fetchall()
            if due:
                batch_id = due[0][0]
            else:
                batch_id = uuid.uuid4().hex
                size, last = 0, None
                for row_id, length in connection.execute(
                        "SELECT id, length(payload) FROM spool WHERE writer = ? AND batch IS NULL"
                        " ORDER BY id LIMIT ?", (writer, MAX_BATCH_ITEMS)):
                    if size >= max_bytes:
                        break
                    size, last = size + length, row_id
                if last is None:
                    connection.execute("DELETE FROM flags WHERE name = ?", (writer + ":scheduled",))
                    return None
                connection.execute(
                    "UPDATE spool SET batch = ? WHERE writer = ? AND batch IS NULL AND id <= ?",
                    (batch_id, writer, last))
            connection.execute("UPDATE spool SET deadline = ? WHERE writer = ? AND batch = ?",
                               (now + self.lease_seconds, writer, batch_id))
            rows = connection.execute(
                "SELECT payload, attempts FROM spool WHERE writer = ? AND batch = ? ORDER BY id",
                (writer, batch_id)).fetchall()
            more = len(due) > 1 or connection.execute(
                "SELECT 1 FROM spool WHERE writer = ? AND batch IS NULL LIMIT 1",
                (writer,)).fetchone() is not None
            if more:
                connection.execute("INSERT OR REPLACE INTO flags VALUES (?, ?)",
                                   (writer + ":scheduled", now + self.lease_seconds))
            else:
                connection.execute("DELETE FROM flags WHERE name = ?", (writer + ":scheduled",))
            return Batch(batch_id, rows[0][1], [row[0] for row in rows], more)
        return self._transaction(work)

    def ack(self, writer, batch_id):
        """Forget a batch every record of which has been written; the writer's failure streak ends."""
        def work(connection, now):
            connection.execute(
                "UPDATE queued SET records = records - (SELECT total(records) FROM spool"
                " WHERE writer = ? AND batch = ?) WHERE writer = ?", (writer, batch_id, writer))
            connection.execute("DELETE FROM spool WHERE writer = ? AND batch = ?", (writer, batch_id))
            connection.execute("DELETE FROM streaks WHERE writer = ?", (writer,))
        self._transaction(work)

    def count_failure(self, writer):
        """Count one more failed write in a row for the writer; returns the streak."""
        return self._transaction(lambda connection, now: connection.execute(
            "INSERT INTO streaks VALUES (?, 1) ON CONFLICT (writer) DO UPDATE"
            " SET failures = failures + 1 RETURNING failures", (writer,)).fetchone()[0])

    def paused(self, writer):
        """Seconds the writer stays paused after a failure; 0 when it may write."""
        row = self._connection().execute("SELECT expires FROM flags WHERE name = ?",
                                         (writer + ":paused",)).fetchone()
        return max(0.0, row[0] - time.time()) if row else 0.0

    def fail(self, writer, batch_id, retry_in):
        """Give a batch back for a retry in retry_in seconds, pausing its writer as long; returns its attempts."""
        def work(connection, now):
            connection.execute("INSERT OR REPLACE INTO flags VALUES (?, ?)",
                               (writer + ":paused", now + retry_in))
            connection.execute(
                "UPDATE spool SET attempts = attempts + 1, deadline = ?"
                " WHERE writer = ? AND batch = ?", (now + retry_in, writer, batch_id))
            row = connection.execute("SELECT max(attempts) FROM spool WHERE writer = ? AND batch = ?",
                                     (writer, batch_id)).fetchone()
            return row[0] or 0
        return self._transaction(work)

    def reserve_wakeup(self, writer):
        """Seconds until the earliest leased batch comes back, if no wake-up for it is reserved yet."""
        def work(connection, now):
            deadline = connection.execute(
                "SELECT min(deadline) FROM spool WHERE writer = ? AND batch IS NOT NULL",
                (writer,)).fetchone()[0]
            if deadline is None or not self._set_flag(connection, writer + ":wakeup", now,
                                                      max(deadline, now) + 0.001):
                return None
            return max(0.0, deadline - now)
        return self._transaction(work)

    @staticmethod
    def _set_flag(connection, name, now, expires):
        """Set a flag until expires unless it is set already; True if this call set it."""
        return connection.execute(
            "INSERT INTO flags VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
            " SET expires = excluded.expires WHERE flags.expires <= ?",
            (name, expires, now)).rowcount > 0

    def depth(self, writer):
        """Requests waiting for a writer, queued or in leased batches."""
        return self._connection().execute(
            "SELECT count(*) FROM spool WHERE writer = ?", (writer,)).fetchone()[0]

    def ping(self):
        """Raise SpoolUnavailable unless the SQLite file can be read."""
        self._connection().execute("SELECT 1 FROM spool LIMIT 1")

    @staticmethod
    def forget_empty_claims(writer):
        """Nothing to clear: SQLite's claims keep no record count apart from their rows."""
        return 0

    def publish(self, written):
        """Append the ids the database writer just stored to each project's live feed: {project id: [id, ...]}.

        One row per project and batch, numbered in commit order (SQLite has one
        writer at a time); the oldest go as new ones come (FEED_SECONDS, FEED_MAX_IDS), never the newest.
        """
        def work(connection, now):
            for project_id, ids in written.items():
                newest = connection.execute("INSERT INTO feed (project, ids, n, at) VALUES (?, ?, ?, ?)",
                                            (project_id, ",".join(ids), len(ids), now)).lastrowid
                trimmed = connection.execute(
                    "SELECT max(position) FROM (SELECT position, at, sum(n) OVER (ORDER BY position DESC) AS kept"
                    " FROM feed WHERE project = ?) WHERE position < ? AND (at < ? OR kept > ?)",
                    (project_id, newest, now - FEED_SECONDS, FEED_MAX_IDS)).fetchone()[0]
                if trimmed is not None:
                    connection.execute("DELETE FROM feed WHERE project = ? AND position <= ?", (project_id, trimmed))
                    connection.execute("INSERT OR REPLACE INTO feed_trimmed VALUES (?, ?)", (project_id, trimmed))
        self._transaction(work)

    def feed_end(self, project_id):
        """The position of the latest feed entry: reading after it gives only what comes next."""
        row = self._connection().execute("SELECT seq FROM sqlite_sequence WHERE name = 'feed'").fetchone()
        return str(row[0] if row else 0)

    def feed(self, project_id, after, inclusive, count):
        """Up to `count` feed entries from position `after` on, oldest first, as [(position, [id, ...])]; and
        whether entries after `after` were trimmed away before they were read (a gap)."""
        if not (after.isdigit() and int(after) < 2 ** 63):
            raise ValueError("%r is not a position of this feed" % after)
        connection = self._connection()
        rows = connection.execute(
            "SELECT position, ids FROM feed WHERE project = ? AND position %s ? ORDER BY position LIMIT ?"
            % (">=" if inclusive else ">"), (project_id, int(after), count)).fetchall()
        trimmed = connection.execute("SELECT position FROM feed_trimmed WHERE project = ?", (project_id,)).fetchone()
        # Reading from inside an entry (inclusive), that entry's being dropped is a gap too.
        gap = bool(trimmed) and (trimmed[0] >= int(after) if inclusive else trimmed[0] > int(after))
        return [(str(position), ids.split(",")) for position, ids in rows], gap

    def beat(self, name, at):
        """Record that consumer `name` was alive at `at` (epoch seconds); forgets beats a day old."""
        def work(connection, now):
            connection.execute("INSERT OR REPLACE INTO heartbeats VALUES (?, ?)", (name, at))
            connection.execute("DELETE FROM heartbeats WHERE at < ?", (at - HEARTBEATS_KEPT_SECONDS,))
        self._transaction(work)

    def heartbeats(self):
        """{consumer name: epoch seconds of its last heartbeat} over the last day."""
        # beat() forgets old beats only while some consumer still beats.
        return dict(self._connection().execute("SELECT name, at FROM heartbeats WHERE at >= ?",
                                               (time.time() - HEARTBEATS_KEPT_SECONDS,)))
