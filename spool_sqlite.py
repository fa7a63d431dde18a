"""The spool in SQLite, for dev mode: one file in the data folder, shared by the processes of one machine.

What the methods promise is spool.Spool's; the limits (FEED_MAX_IDS and the
others) are read from spool when used, so that they are set in one place.
"""
import os
import sqlite3
import threading
import time
import uuid

import models
import spool


@spool.reports_unavailable((sqlite3.Error, OSError), "SQLite spool")
class SqliteSpool(spool.Spool):
    """The spool in one SQLite table; rows with a batch id are leased until their deadline.

    One machine has no use for shards: each writer has one queue, shard 0, and
    the methods' `shard` is always that (LOGFLOW_SPOOL_SHARDS is ignored).
    """

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
        def work(connection, now):
            if self.max_queue and any(
                    self._queued(connection, writer) + records > self.max_queue for writer in writers):
                raise spool.QueueFull()
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
                    woken.append((writer, 0))
            self._add(connection, counters)
            return woken
        return self._transaction(work)

    @staticmethod
    def _add(connection, counters):
        connection.executemany(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name)"
            " DO UPDATE SET value = value + excluded.value", counters)

    def remember(self, name, value, seconds):
        self._transaction(lambda connection, now: connection.execute(
            "INSERT OR REPLACE INTO memos VALUES (?, ?, ?)", (name, value, now + seconds)))

    def recall(self, name):
        row = self._connection().execute("SELECT value FROM memos WHERE name = ? AND expires > ?",
                                         (name, time.time())).fetchone()
        return row[0] if row else None

    def epoch(self, name):
        row = self._connection().execute("SELECT value FROM epochs WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def advance(self, name):
        return self._transaction(lambda connection, now: connection.execute(
            "INSERT INTO epochs VALUES (?, 1) ON CONFLICT (name) DO UPDATE"
            " SET value = value + 1 RETURNING value", (name,)).fetchone()[0])

    def strike(self, name, seconds):
        def work(connection, now):
            # Lapsed strikes go here, so the table holds only the last `seconds` of names.
            connection.execute("DELETE FROM strikes WHERE expires <= ?", (now,))
            return connection.execute(
                "INSERT INTO strikes VALUES (?, 1, ?) ON CONFLICT (name) DO UPDATE SET count = count + 1"
                " RETURNING count", (name, now + seconds)).fetchone()[0]
        return self._transaction(work)

    def strikes(self, name):
        now = time.time()
        row = self._connection().execute("SELECT count, expires FROM strikes WHERE name = ? AND expires > ?",
                                         (name, now)).fetchone()
        return (row[0], row[1] - now) if row else (0, 0)

    def clear_strikes(self, name):
        self._transaction(lambda connection, now: connection.execute("DELETE FROM strikes WHERE name = ?", (name,)))

    def add_counters(self, counters):
        self._transaction(lambda connection, now: self._add(connection, counters))

    def counters(self):
        return dict(self._connection().execute("SELECT name, value FROM counters"))

    def oldest_received_at(self, writer):
        row = self._connection().execute(
            "SELECT payload FROM spool WHERE writer = ? AND batch IS NULL ORDER BY id LIMIT 1",
            (writer,)).fetchone()
        return spool.received_at_of(row[0]) if row else None

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
                raise spool.RateLimited((cost - tokens) / limit.rate)
            self._buckets[limit.key] = (tokens - cost, now)

    def queued_records(self, writer):
        return self._queued(self._connection(), writer)

    def claim(self, writer, max_bytes, shard=0):
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
                        " ORDER BY id LIMIT ?", (writer, spool.MAX_BATCH_ITEMS)):
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
            return spool.Batch(batch_id, rows[0][1], [row[0] for row in rows], more)
        return self._transaction(work)

    def ack(self, writer, batch_id, shard=0):
        def work(connection, now):
            connection.execute(
                "UPDATE queued SET records = records - (SELECT total(records) FROM spool"
                " WHERE writer = ? AND batch = ?) WHERE writer = ?", (writer, batch_id, writer))
            connection.execute("DELETE FROM spool WHERE writer = ? AND batch = ?", (writer, batch_id))
            connection.execute("DELETE FROM streaks WHERE writer = ?", (writer,))
        self._transaction(work)

    def count_failure(self, writer, shard=0):
        return self._transaction(lambda connection, now: connection.execute(
            "INSERT INTO streaks VALUES (?, 1) ON CONFLICT (writer) DO UPDATE"
            " SET failures = failures + 1 RETURNING failures", (writer,)).fetchone()[0])

    def paused(self, writer, shard=None):
        row = self._connection().execute("SELECT expires FROM flags WHERE name = ?",
                                         (writer + ":paused",)).fetchone()
        return max(0.0, row[0] - time.time()) if row else 0.0

    def fail(self, writer, batch_id, retry_in, shard=0):
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

    def reserve_wakeup(self, writer, shard=0):
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
        # One row per project and batch, numbered in commit order (SQLite has one writer at a time).
        def work(connection, now):
            for project_id, ids in written.items():
                newest = connection.execute("INSERT INTO feed (project, ids, n, at) VALUES (?, ?, ?, ?)",
                                            (project_id, ",".join(ids), len(ids), now)).lastrowid
                trimmed = connection.execute(
                    "SELECT max(position) FROM (SELECT position, at, sum(n) OVER (ORDER BY position DESC) AS kept"
                    " FROM feed WHERE project = ?) WHERE position < ? AND (at < ? OR kept > ?)",
                    (project_id, newest, now - spool.FEED_SECONDS, spool.FEED_MAX_IDS)).fetchone()[0]
                if trimmed is not None:
                    connection.execute("DELETE FROM feed WHERE project = ? AND position <= ?", (project_id, trimmed))
                    connection.execute("INSERT OR REPLACE INTO feed_trimmed VALUES (?, ?)", (project_id, trimmed))
        self._transaction(work)

    def feed_end(self, project_id):
        row = self._connection().execute("SELECT seq FROM sqlite_sequence WHERE name = 'feed'").fetchone()
        return str(row[0] if row else 0)

    def feed(self, project_id, after, inclusive, count):
        if not (after.isdigit() and int(after) < 2 ** 63):
            raise ValueError("%r is not a position of this feed" % after)
        connection = self._connection()
        rows = connection.execute(
            "SELECT position, ids FROM feed WHERE project = ? AND position %s ? ORDER BY position LIMIT ?"
            % (">=" if inclusive else ">"), (project_id, int(after), count)).fetchall()
        trimmed = connection.execute("SELECT position FROM feed_trimmed WHERE project = ?", (project_id,)).fetchone()
        gap = self._gap(trimmed[0] if trimmed else None, int(after), inclusive)
        return [(str(position), ids.split(",")) for position, ids in rows], gap

    def beat(self, name, at):
        def work(connection, now):
            connection.execute("INSERT OR REPLACE INTO heartbeats VALUES (?, ?)", (name, at))
            connection.execute("DELETE FROM heartbeats WHERE at < ?", (at - spool.HEARTBEATS_KEPT_SECONDS,))
        self._transaction(work)

    def heartbeats(self):
        # beat() forgets old beats only while some consumer still beats.
        return dict(self._connection().execute("SELECT name, at FROM heartbeats WHERE at >= ?",
                                               (time.time() - spool.HEARTBEATS_KEPT_SECONDS,)))
