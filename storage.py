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
import datetime
import errno
import fcntl
import io
import logging
import os
import re
import zlib

import orjson
import peewee
import psycopg2.errors

from models import Log, LogCount, database, durable_transaction, minute_of, minute_of_text, on_postgres

logger = logging.getLogger("logflow")

COLUMNS = "id, project_id, level, message, metadata, timestamp, received_at"
# Rows deleted per transaction when pruning, so no lock is held for long.
PRUNE_BATCH_ROWS = 5000
DAILY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.log(\.gz)?$")


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
            with durable_transaction():
                if on_postgres():
                    inserted = copy_rows(database.cursor(), items)
                else:
                    inserted = insert_rows(database.cursor(), items)
                # Last, so the count rows other consumers also add to stay locked only until COMMIT.
                LogCount.add(inserted)
        return len(items)

    def prune(self, project_id, cutoff, today, dry_run=False):
        """Delete a project's rows timestamped before the UTC day cutoff (None: keep all), a batch per transaction.

        Returns {"deleted": n}, the rows that (would) go.
        """
        if cutoff is None:
            return {"deleted": 0}
        expired = Log.select().where(Log.project == project_id,
                                     Log.timestamp < datetime.datetime.combine(cutoff, datetime.time()))
        with database.connection_context(), peewee.__exception_wrapper__:
            if dry_run:
                return {"deleted": expired.count()}
            # Batches by physical row address: each holds its locks briefly and
            # finds its rows through the (project, timestamp) index.
            if on_postgres():
                batch, params = expired.select(peewee.SQL("ctid")).limit(PRUNE_BATCH_ROWS).sql()
                statement = "DELETE FROM logs WHERE ctid = ANY(ARRAY(%s))" % batch
            else:
                batch, params = expired.select(peewee.SQL("rowid")).limit(PRUNE_BATCH_ROWS).sql()
                statement = "DELETE FROM logs WHERE rowid IN (%s)" % batch
            # The rows a batch really deleted leave the counts in its own transaction.
            statement += " RETURNING project_id, %s, level" % minute_of()
            deleted = 0
            while True:
                with database.atomic():
                    gone = collections.Counter(map(tuple, database.execute_sql(statement, params)))
                    LogCount.add({key: -number for key, number in gone.items()})
                    forget_empty_counts(project_id, gone)
                count = sum(gone.values())
                deleted += count
                if count < PRUNE_BATCH_ROWS:
                    return {"deleted": deleted}


def forget_empty_counts(project_id, changed):
    """Delete the count rows in the minutes of these (project, minute, level) keys that fell to zero or below."""
    if not changed:
        return
    minutes = [minute for _, minute, _ in changed]
    # Below zero only where rows were stored before the counts existed and were never
    # counted (LogCount.rebuild): with their rows gone, no count is the right count.
    (LogCount.delete()
     .where(LogCount.project == project_id, LogCount.minute.between(min(minutes), max(minutes)),
            LogCount.number <= 0)
     .execute())


def count_items(items):
    """{(project id, minute, level): records} of a batch, as the counts of rows that all went in."""
    by_text = collections.Counter((project, record["timestamp"][:16], record["level"])
                                  for project, _, record in items)
    counts = collections.Counter()
    for (project, minute, level), number in by_text.items():
        counts[(project, minute_of_text(minute), level)] += number
    return counts


def copy_rows(cursor, items):
    """PostgreSQL: COPY straight into logs; if an id is stored already, through a table that skips it.

    COPY is several times faster than a multi-row INSERT but cannot skip
    duplicates itself. Duplicates come only with redelivery (a consumer died
    or a write failed after the rows were stored), so the direct COPY is
    tried first, under a savepoint, and the slower path taken only when it
    meets an id that is already there.
    """
    buffer = io.StringIO("".join(copy_line(*item) for item in items))
    cursor.execute("SAVEPOINT direct_copy")
    try:
        cursor.copy_expert("COPY logs (%s) FROM STDIN" % COLUMNS, buffer)
        cursor.execute("RELEASE SAVEPOINT direct_copy")
        return count_items(items)
    except psycopg2.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT direct_copy")
    buffer.seek(0)
    cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS logs_incoming (LIKE logs)"
                   " ON COMMIT DELETE ROWS")
    cursor.copy_expert("COPY logs_incoming (%s) FROM STDIN" % COLUMNS, buffer)
    # RETURNING names only the rows this statement inserted: the skipped ones are counted already.
    cursor.execute("WITH inserted AS (INSERT INTO logs (%s) SELECT %s FROM logs_incoming ON CONFLICT DO NOTHING"
                   " RETURNING project_id, level, timestamp)"
                   " SELECT project_id, %s, level, count(*) FROM inserted GROUP BY 1, 2, 3"
                   % (COLUMNS, COLUMNS, minute_of()))
    return {(project, minute, level): number for project, minute, level, number in cursor.fetchall()}


# What COPY's text format escapes; normalize() has replaced NULs already.
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_line(project, received_at, record):
    """One row in COPY's text format: three times faster to build than csv.writer's."""
    message = record["message"]
    if "\\" in message or "\t" in message or "\n" in message or "\r" in message:
        message = message.translate(COPY_ESCAPES)
    # JSON text holds no raw tab or newline; only its backslashes need doubling.
    metadata = orjson.dumps(record["metadata"]).decode()
    if "\\" in metadata:
        metadata = metadata.replace("\\", "\\\\")
    return "%s\t%d\t%s\t%s\t%s\t%s\t%s\n" % (record["id"], project, record["level"], message, metadata,
                                              record["timestamp"], received_at)


def insert_rows(cursor, items):
    """SQLite: one prepared INSERT OR IGNORE run for every row, in the forms Peewee reads back.

    Returns the counts of the rows inserted. executemany says only how many
    went in; when some were skipped (redelivery), the rows above the largest
    rowid from before are the ones it inserted: SQLite numbers a new row one
    above the largest (until 2**63 - 1), and this transaction holds the only
    write lock (BEGIN IMMEDIATE).
    """
    rows = [(record["id"].replace("-", ""), project, record["level"], record["message"],
             orjson.dumps(record["metadata"]).decode(), sqlite_time(record["timestamp"]),
             sqlite_time(received_at))
            for project, received_at, record in items]
    before = cursor.execute("SELECT coalesce(max(rowid), 0) FROM logs").fetchone()[0]
    cursor.executemany("INSERT OR IGNORE INTO logs (%s) VALUES (?, ?, ?, ?, ?, ?, ?)" % COLUMNS, rows)
    if cursor.rowcount == len(rows):
        return count_items(items)
    if cursor.rowcount == 0:
        return {}
    cursor.execute("SELECT project_id, %s, level, count(*) FROM logs WHERE rowid > ? GROUP BY 1, 2, 3"
                   % minute_of(), (before,))
    return {(project, minute, level): number for project, minute, level, number in cursor.fetchall()}


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

    def prune(self, project_id, cutoff, today, dry_run=False):
        """Delete a project's daily files dated before cutoff (None: keep all), gzip the rest older than today.

        Returns {"deleted": n, "compressed": n}: the files that (would) go and be compressed.
        """
        folder = os.path.join(self.log_dir, str(int(project_id)))
        done = {"deleted": 0, "compressed": 0}
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return done
        for name in names:
            match = DAILY_FILE.match(name)
            try:
                day = datetime.date.fromisoformat(match.group(1)) if match else None
            except ValueError:
                day = None
            if day is None:
                continue
            path = os.path.join(folder, name)
            if cutoff is not None and day < cutoff:
                done["deleted"] += 1
                if not dry_run:
                    remove(path)
                    if match.group(2):
                        # What a failed append left (append_member): gone with its day.
                        remove(path + ".size")
            elif day < today and not match.group(2):
                done["compressed"] += 1
                if not dry_run:
                    compress(path)
        return done


def remove(path):
    """Delete a file that another pruning consumer may have deleted already."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def compress(path):
    """Gzip a daily file into <path>.gz under the writers' lock, then remove it; False if it was gone."""
    try:
        descriptor = lock_file(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        compress_locked(descriptor, path)
    finally:
        os.close(descriptor)
    return True


def compress_locked(descriptor, path):
    """compress() once the caller holds the flock of `descriptor`, which `path` names.

    A late record may reopen the day's file afterwards: the next run appends it
    to the .gz as another gzip member (concatenated members read as one
    stream), in place, so the I/O is the late lines', not the whole day's. A
    crash between the append and the unlink repeats those lines in the .gz,
    as a redelivery can.
    """
    if trim_torn_tail(descriptor, path):
        append_member(descriptor, path + ".gz")
    os.unlink(path)
    fsync_folder(path)


def append_member(descriptor, target):
    """Append the whole file of `descriptor` to target as one gzip member, whole or not at all.

    `<target>.size` holds target's size while the member is written, so that
    after a crash mid-write the next run cuts the torn member off first; a
    failure short of a crash cuts it off at once, as append() does.
    """
    marker = target + ".size"
    output = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(output).st_size
        start = appending_from(marker)
        if start is None:
            start = size
            with open(marker, "w") as handle:
                # The newline tells a whole marker from one a crash cut short.
                handle.write("%d\n" % start)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_folder(marker)
        else:
            # Never beyond the end: retention may have deleted the .gz since.
            start = min(start, size)
            os.ftruncate(output, start)
        write_whole(output, gzip_member(descriptor), start, target)
    finally:
        os.close(output)
    # Gone for good before the daily file goes: else a later late file's run would cut this member off.
    os.unlink(marker)
    fsync_folder(marker)


def gzip_member(descriptor):
    """Yield the file of `descriptor`, read from its start, as one whole gzip member in chunks."""
    # wbits 31: a whole gzip member, header and trailer included.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    offset = 0
    while chunk := os.pread(descriptor, 1 << 20, offset):
        yield compressor.compress(chunk)
        offset += len(chunk)
    yield compressor.flush()


def appending_from(marker):
    """The size of a .gz before an append that did not finish, or None if none was under way."""
    try:
        with open(marker) as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    # A marker without its newline was cut short by a crash: its append had
    # not begun (the marker is made durable first), and its digits may be too few.
    if not text.endswith("\n") or not text[:-1].isdigit():
        return None
    return int(text)


def fsync_folder(path):
    """Make the creation, rename or removal of path durable."""
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def lock_file(path, flags):
    """Open path and take its exclusive flock, again until the lock is on the file path still names.

    compress() unlinks a daily file while writers may wait for its lock; a
    writer that then got the lock would append to a file nobody reads.
    """
    while True:
        descriptor = os.open(path, flags, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            opened = os.fstat(descriptor)
            current = os.stat(path)
        except FileNotFoundError:
            os.close(descriptor)
            continue
        except BaseException:
            os.close(descriptor)
            raise
        if (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
            return descriptor
        os.close(descriptor)


def append(path, data):
    """Append data to a file whole or not at all, even with other processes appending."""
    # The lock keeps concurrent consumers' lines apart even when a write
    # is split; the truncate undoes a partial write (disk full), so no
    # torn line is ever left for a retry to append after.
    descriptor = lock_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        start = trim_torn_tail(descriptor, path)
        write_whole(descriptor, [data], start, path)
        if start == 0:
            # A new file: fsync made its data durable, not its name in its folder, nor
            # a new project folder's name in the log folder. Under the lock, so that no
            # other writer acknowledges a batch in this file before its name is durable.
            try:
                fsync_folder(path)
                fsync_folder(os.path.dirname(path))
            except OSError:
                os.ftruncate(descriptor, 0)  # the retry starts the file again, and syncs again
                raise
    finally:
        os.close(descriptor)


def write_whole(descriptor, chunks, start, path):
    """Append every chunk and fsync; on failure cut the file back to `start`, so no torn tail stays."""
    try:
        for chunk in chunks:
            write_all(descriptor, chunk, path)
        os.fsync(descriptor)
    except OSError:
        os.ftruncate(descriptor, start)
        raise


def write_all(descriptor, data, path):
    """Write all of data, however many writes it takes; raise if the disk takes none of it."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written == 0:
            raise OSError(errno.ENOSPC, "no space written", path)
        view = view[written:]


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
