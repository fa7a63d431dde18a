"""The spool: durable per-writer queues of accepted records, handed out in leased batches.

Huey's own queue delivers at most once, so records do not travel in Huey
messages. The web process appends each request's records to one queue per
writer; a consumer claims a batch, writes it, then acknowledges it. A batch
whose consumer died, or whose write failed, comes back once its lease (or its
retry delay) runs out: delivery is at least once, and the writers make
redelivery harmless.

A writer's queue may be split into shards (LOGFLOW_SPOOL_SHARDS, Redis only):
each request goes to one shard, and each shard is claimed, leased, paused and
woken on its own, so consumers drain the shards in parallel. Without shards
(the SQLite spool, and Redis's default) a writer has one queue, shard 0.

Each queue also carries a "scheduled" flag so that a burst of requests wakes
the consumer with one Huey task instead of one per request, and a "wakeup"
flag so that at most one Huey task waits for the next lease to run out.

Two backends with the same methods (the contract, class Spool): Redis in
production (spool_redis.py), SQLite in dev mode (spool_sqlite.py). This module
holds what they share: the contract, its errors and limits, the payload format,
and open_spool, which picks one. The backends import this module; it imports a
backend only when asked for one, so importing either side first works.
"""
import abc
import collections
import functools
import inspect
import os
import re

import orjson

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


class OutcomeUnknown(SpoolUnavailable):
    """The push was sent, but its answer was lost (the connection broke or timed out): the records may be queued."""


class QueueFull(Exception):
    """A writer has LOGFLOW_MAX_QUEUE records waiting (queued or unacknowledged): nothing was queued."""


class RateLimited(Exception):
    """The project spent its records per second: nothing was queued; retry after `retry_after` s."""

    def __init__(self, retry_after):
        super().__init__("rate limited; retry after %.1f s" % retry_after)
        self.retry_after = retry_after


class NotReplicated(Exception):
    """The records were queued, but fewer Redis replicas than asked confirmed them in time: they may be stored."""

    def __init__(self, woken, confirmed, wanted):
        super().__init__("%d of %d replicas confirmed the push" % (confirmed, wanted))
        # The writers the push found idle: the records are queued, so they are woken all the same.
        self.woken = woken
        self.confirmed, self.wanted = confirmed, wanted


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


class Spool(abc.ABC):
    """What both backends do, per writer ("db", "file") and for every process sharing the store.

    Every public method raises SpoolUnavailable when the store cannot be reached
    (the backends are decorated with reports_unavailable).
    """

    # Shards of each writer's queue: the methods taking a `shard` work on one of them.
    shards = 1

    # The queues: requests in, leased batches out.

    @abc.abstractmethod
    def push(self, payload, writers, records, limit=None, counters=()):
        """Queue one payload of `records` records for each writer, all or none, in one shard; returns the
        (writer, shard) queues to wake.

        Adds the (name, amount) `counters` with it. Raises QueueFull, RateLimited
        (when `limit`, a Limit, is spent), NotReplicated (Redis with replicas
        to wait for, see RedisSpool), OutcomeUnknown (the push was sent, its
        answer lost) or SpoolUnavailable (nothing was queued).
        """

    @abc.abstractmethod
    def claim(self, writer, max_bytes, shard=0):
        """Lease the next batch of a writer's shard; None when there is nothing to do."""

    @abc.abstractmethod
    def ack(self, writer, batch_id, shard=0):
        """Forget a batch every record of which has been written; the shard's failure streak ends."""

    @abc.abstractmethod
    def count_failure(self, writer, shard=0):
        """Count one more failed write in a row for the writer's shard; returns the streak."""

    @abc.abstractmethod
    def fail(self, writer, batch_id, retry_in, shard=0):
        """Give a batch back for a retry in retry_in seconds, pausing its shard as long; returns its attempts."""

    @abc.abstractmethod
    def paused(self, writer, shard=None):
        """Seconds the writer's shard stays paused after a failure; 0 when it may write. No shard: the longest pause."""

    @abc.abstractmethod
    def reserve_wakeup(self, writer, shard=0):
        """Seconds until the shard's earliest leased batch comes back, if no wake-up for it is reserved yet."""

    @abc.abstractmethod
    def queued_records(self, writer):
        """Records waiting for a writer (in all shards): queued, or in batches not yet acknowledged."""

    @abc.abstractmethod
    def depth(self, writer):
        """Requests waiting for a writer (in all shards), queued or in leased batches."""

    @abc.abstractmethod
    def oldest_received_at(self, writer):
        """received_at of the request that has waited longest in a writer's queue (any shard), or None."""

    @abc.abstractmethod
    def forget_empty_claims(self, writer):
        """Clear the record counts that empty claims of older versions left behind; returns how many went."""

    @abc.abstractmethod
    def ping(self):
        """Raise SpoolUnavailable unless the store answers."""

    # Small shared state: memos, epochs, strikes, counters, heartbeats.

    @abc.abstractmethod
    def remember(self, name, value, seconds):
        """Keep a small value under a name for `seconds`, for every process to read."""

    @abc.abstractmethod
    def recall(self, name):
        """The value remembered under a name, or None."""

    @abc.abstractmethod
    def epoch(self, name):
        """How many times the named epoch was advanced; 0 before the first time."""

    @abc.abstractmethod
    def advance(self, name):
        """Advance the named epoch by one; returns its new value."""

    @abc.abstractmethod
    def strike(self, name, seconds):
        """Count one more strike (a failed sign-in, say) against a name; the count lapses `seconds` after the first. Returns it."""

    @abc.abstractmethod
    def strikes(self, name):
        """(strikes against a name, seconds until they lapse); (0, 0) when there are none."""

    @abc.abstractmethod
    def clear_strikes(self, name):
        """Forget the strikes against a name."""

    @abc.abstractmethod
    def add_counters(self, counters):
        """Add (name, amount) pairs to the counters every process shares."""

    @abc.abstractmethod
    def counters(self):
        """Every shared counter, by name."""

    @abc.abstractmethod
    def beat(self, name, at):
        """Record that consumer `name` was alive at `at` (epoch seconds); forgets beats a day old."""

    @abc.abstractmethod
    def heartbeats(self):
        """{consumer name: epoch seconds of its last heartbeat} over the last day."""

    # Each project's live feed of the ids the database writer stored.

    @abc.abstractmethod
    def publish(self, written):
        """Append the ids the database writer just stored to each project's live feed: {project id: [id, ...]}.

        The oldest go as new ones come (FEED_SECONDS, FEED_MAX_IDS), never the newest.
        """

    @abc.abstractmethod
    def feed_end(self, project_id):
        """The position of the project's latest feed entry: reading after it gives only what comes next."""

    @abc.abstractmethod
    def feed(self, project_id, after, inclusive, count):
        """Up to `count` feed entries from position `after` on, oldest first, as [(position, [id, ...])]; and
        whether entries after `after` were trimmed away before they were read (a gap)."""

    @staticmethod
    def _gap(trimmed, after, inclusive):
        """Whether a reader from `after` missed entries; `trimmed` is the last position dropped, or None."""
        # Reading from inside an entry (inclusive), that entry's being dropped is a gap too.
        return trimmed is not None and (trimmed >= after if inclusive else trimmed > after)


def open_spool(settings):
    """The spool the settings name: Redis if REDIS_URL is set, else SQLite in the data folder (one shard)."""
    # Imported here, not at the top: each backend imports this module for the contract.
    if settings.redis_url:
        from spool_redis import RedisSpool
        return RedisSpool(settings.redis_url, settings.lease_seconds, settings.max_queue, settings.spool_shards,
                          replicas=settings.redis_replicas, replicas_timeout=settings.redis_replicas_timeout_seconds)
    from spool_sqlite import SqliteSpool
    return SqliteSpool(os.path.join(settings.data_dir, "spool.db"), settings.lease_seconds,
                       settings.max_queue)

