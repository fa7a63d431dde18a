"""The writers: where a batch of accepted records ends up.

Every writer takes the same input, a list of decoded (project id,
received_at, record) items, and either stores all of it or raises. Both
tolerate redelivery: the database skips ids it already holds; the file writer
may repeat a line only when a consumer died between writing and acknowledging.

Each writer also names its `outage_errors`: failures of the store itself
(database down, disk full), after which the batch is retried later. Any other
error is blamed on a record, which the consumer then sets aside in quarantine.
"""
import collections
import csv
import errno
import fcntl
import io
import logging
import os

import orjson
import peewee

from models import database

logger = logging.getLogger("logflow")

COLUMNS = "id, project_id, level, message, metadata, timestamp, received_at"


class DatabaseWriter:
    """Writes a batch into the `logs` table in one transaction, skipping ids already stored."""

    name = "db"
    # Connection, server and schema trouble; integrity and data errors are a record's.
    outage_errors = (peewee.OperationalError, peewee.InterfaceError, peewee.ProgrammingError,
                     peewee.InternalError, OSError)

    def write(self, items):
        """Store every item; returns how many there were."""
        # The wrapper gives driver errors Peewee's classes, which outage_errors names.
        with database.connection_context(), peewee.__exception_wrapper__:
            with database.atomic():
                if isinstance(database.obj, peewee.PostgresqlDatabase):
                    copy_rows(database.cursor(), items)
                else:
                    insert_rows(database.cursor(), items)
        return len(items)


def copy_rows(cursor, items):
    """PostgreSQL: COPY into a temporary table, then one INSERT that skips ids already stored.

    COPY is several times faster than a multi-row INSERT but cannot skip
    duplicates itself.
    """
    buffer = io.StringIO()
    # Quoting every field keeps an empty message an empty string, not NULL.
    csv.writer(buffer, quoting=csv.QUOTE_ALL).writerows(
        (record["id"], project, record["level"], record["message"],
         orjson.dumps(record["metadata"]).decode(), record["timestamp"], received_at)
        for project, received_at, record in items)
    buffer.seek(0)
    cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS logs_incoming (LIKE logs)"
                   " ON COMMIT DELETE ROWS")
    cursor.copy_expert("COPY logs_incoming (%s) FROM STDIN WITH (FORMAT csv)" % COLUMNS, buffer)
    cursor.execute("INSERT INTO logs (%s) SELECT %s FROM logs_incoming ON CONFLICT DO NOTHING"
                   % (COLUMNS, COLUMNS))


def insert_rows(cursor, items):
    """SQLite: one prepared INSERT OR IGNORE run for every row, in the forms Peewee reads back."""
    cursor.executemany(
        "INSERT OR IGNORE INTO logs (%s) VALUES (?, ?, ?, ?, ?, ?, ?)" % COLUMNS,
        [(record["id"].replace("-", ""), project, record["level"], record["message"],
          orjson.dumps(record["metadata"]).decode(), sqlite_time(record["timestamp"]),
          sqlite_time(received_at))
         for project, received_at, record in items])


def sqlite_time(text):
    """RFC 3339 as the spool carries it ("2026-11-27T10:00:00.000000Z") as SQLite's column holds it."""
    return text[:10] + " " + text[11:26]


class FileWriter:
    """Appends records as JSON lines to <log_dir>/<project id>/<YYYY-MM-DD>.log, by UTC date."""

    name = "file"
    # Disk full, permissions, I/O errors; a record can only fail by its shape.
    outage_errors = (OSError,)

    def __init__(self, log_dir):
        self.log_dir = log_dir

    def write(self, items):
        """Append every item; returns how many there were."""
        files = collections.defaultdict(list)
        for project, received_at, record in items:
            line = orjson.dumps({
                "id": record["id"],
                "project_id": project,
                "timestamp": record["timestamp"],
                "level": record["level"],
                "message": record["message"],
                "metadata": record["metadata"],
                "received_at": received_at,
            }) + b"\n"
            # The folder name comes from the numeric id alone, never from client text.
            files[(int(project), record["timestamp"][:10])].append(line)
        for (project, day), lines in files.items():
            folder = os.path.join(self.log_dir, str(project))
            os.makedirs(folder, exist_ok=True)
            append(os.path.join(folder, day + ".log"), b"".join(lines))
        return len(items)


def append(path, data):
    """Append data to a file whole or not at all, even with other processes appending."""
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # The lock keeps concurrent consumers' lines apart even when a write
        # is split; the truncate undoes a partial write (disk full), so no
        # torn line is ever left for a retry to append after.
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        start = trim_torn_tail(descriptor, path)
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                if written == 0:
                    raise OSError(errno.ENOSPC, "no space written", path)
                view = view[written:]
            os.fsync(descriptor)
        except OSError:
            os.ftruncate(descriptor, start)
            raise
    finally:
        os.close(descriptor)


def trim_torn_tail(descriptor, path):
    """Cut a partial last line, left by a writer killed mid-write; returns the new size.

    A write is acknowledged only once it is complete, so the batch that left
    the fragment is redelivered and its records are written again in full.
    """
    size = os.fstat(descriptor).st_size
    if size == 0 or os.pread(descriptor, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        step = min(end, 1 << 16)
        newline = os.pread(descriptor, step, end - step).rfind(b"\n")
        if newline >= 0:
            end = end - step + newline + 1
            break
        end -= step
    os.ftruncate(descriptor, end)
    logger.warning("cut a torn last line of %d bytes from %s (a writer died mid-write; "
                   "its batch is rewritten)", size - end, path)
    return end
