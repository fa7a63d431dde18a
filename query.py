"""Reading stored logs: request parameters → a LogFilter → a Peewee query, keyset cursors, rows as JSON.

Pages are bounded in rows and in bytes: the database sizes the logs first, and
only those that fit are fetched.

One code path serves both backends; only the SQL for case-insensitive text
search, metadata lookups and sizes differs between PostgreSQL and SQLite.
"""
import base64
import contextlib
import binascii
import dataclasses
import datetime
import re
import uuid

import orjson
import peewee
from peewee import SQL, EnclosedNodeList, NodeList, Tuple, Value, fn

import config
import models
import records
from models import Log

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT_LENGTH = 1000
# Each filter nests the SQL deeper: about 100 overflow SQLite's parser stack.
MAX_METADATA_FILTERS = 20
# Values of one level or meta.* parameter; more only add SQL parameters.
MAX_VALUES = 100
ORDERS = ("desc", "asc")
SINGLE_PARAMETERS = ("min_level", "since", "until", "q", "limit", "order", "cursor")
# A JSON number, and only that: Python's float() also reads "nan", "1_000" and " 42".
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Integers a SQLite parameter can carry.
INT64 = (-2**63, 2**63 - 1)
# Bytes of stored logs a page holds at most, unless the caller says otherwise (LOGFLOW_MAX_PAGE_BYTES).
MAX_PAGE_BYTES = config.Settings.max_page_bytes
# The parameters of GET /logs that only pages have.
PAGE_PARAMETERS = ("limit", "order", "cursor")
# A histogram's range when since and until are not given: the last day.
HISTOGRAM_RANGE = datetime.timedelta(days=1)
MAX_BUCKETS = 120
# Bucket widths in milliseconds, each at most twice the one before: the first that makes
# MAX_BUCKETS or fewer makes more than half as many (60 at least, once the range passes 60 ms).
BUCKET_WIDTHS = ([step * 10 ** power for power in range(3) for step in (1, 2, 3, 5)]
                 + [step * 1000 for step in (1, 2, 3, 5, 10, 15, 30)]
                 + [step * 60000 for step in (1, 2, 3, 5, 10, 15, 30)]
                 + [step * 3600000 for step in (1, 2, 3, 6, 12)]
                 + [step * 86400000 for step in (1, 2, 4, 7)])
# What models.LogCount counts by, in microseconds: histograms of whole minutes read it.
ROLLUP_STEP = 60 * 1000000
# Logs on each side of GET /logs/<id>/context, by default and at most.
DEFAULT_CONTEXT = 20
MAX_CONTEXT = 100
EPOCH = datetime.datetime(1970, 1, 1)
# What one GET /logs/live reads of the feed at most: entries (a stored batch each), and ids among them.
MAX_LIVE_ENTRIES = 20
MAX_LIVE_IDS = 5000
# The initial each level has in the live feed: D, I, W, E, C.
FEED_LEVELS = {level[0]: level for level in records.LEVELS}
# A GET /logs/live cursor: a feed position (spool.feed), then how many ids of its entry were read.
LIVE_CURSOR = re.compile(r"([0-9]{1,20}(?:-[0-9]{1,20})?):([0-9]{1,9})")
# since and until may be a duration before now: digits and a unit.
RELATIVE_TIME = re.compile(r"([0-9]{1,9})([smhdw])")
TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# What a log weighs beside its message and metadata: id, level, two times and
# the JSON around them, rounded up.
LOG_BYTES = 200


class InvalidQuery(ValueError):
    """A request parameter that cannot be read; the message names it."""


@dataclasses.dataclass(frozen=True)
class LogFilter:
    """What a reader asked for: filters, page size, order, and where the previous page ended."""

    levels: frozenset = frozenset(records.LEVELS)
    since: datetime.datetime = None
    until: datetime.datetime = None
    text: str = ""
    # ((key, ...), (value the key may equal, ...)) pairs, all of which must match.
    metadata: tuple = ()
    # The same pairs for meta.<path>!=value, none of which may match; a log without the path matches none.
    excluded_metadata: tuple = ()
    limit: int = DEFAULT_LIMIT
    order: str = "desc"
    # (timestamp, id) of the last log of the previous page.
    after: tuple = None

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def parse_filter(pairs):
    """A LogFilter from (name, value) query parameters; raises InvalidQuery naming the bad one."""
    values = {}
    for name, value in pairs:
        # NUL cannot be stored (ingestion replaced it), and PostgreSQL refuses it in a parameter.
        values.setdefault(name, []).append(value.replace("\x00", "\ufffd"))
    changes, metadata, excluded = {}, [], []
    for name, given in values.items():
        if name in SINGLE_PARAMETERS and len(given) > 1:
            raise InvalidQuery("%s is given %d times; give it once" % (name, len(given)))
        if name.startswith("meta."):
            if len(given) > MAX_VALUES:
                raise InvalidQuery("%s is given %d values; give at most %d" % (name[:64], len(given), MAX_VALUES))
            # A query string reads meta.user!=alice as the name meta.user! with the value alice.
            kind = excluded if name.endswith("!") else metadata
            kind.append((parse_meta_path(name.removesuffix("!")), tuple(meta_candidates(given))))
        elif name not in SINGLE_PARAMETERS + ("level",):
            raise InvalidQuery("unknown parameter %r; see /openapi.json" % name[:64])
    if len(metadata) + len(excluded) > MAX_METADATA_FILTERS:
        raise InvalidQuery("%d meta.* parameters are given; give at most %d"
                           % (len(metadata) + len(excluded), MAX_METADATA_FILTERS))
    levels = set(records.LEVELS)
    if "level" in values:
        names = [name for value in values["level"] for name in value.split(",")]
        if len(names) > MAX_VALUES:
            raise InvalidQuery("level is given %d values; give at most %d" % (len(names), MAX_VALUES))
        levels = {parse_level("level", name) for name in names}
    if "min_level" in values:
        lowest = records.LEVELS.index(parse_level("min_level", values["min_level"][0]))
        levels &= set(records.LEVELS[lowest:])
    changes["levels"] = frozenset(levels)
    for name in ("since", "until"):
        if name in values:
            changes[name] = parse_time(name, values[name][0])
    if "q" in values:
        changes["text"] = values["q"][0]
        if len(changes["text"]) > MAX_TEXT_LENGTH:
            raise InvalidQuery("q is longer than %d characters" % MAX_TEXT_LENGTH)
    if "limit" in values:
        text = values["limit"][0]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise InvalidQuery("limit must be a whole number from 1 to %d, not %r" % (MAX_LIMIT, text[:32]))
        changes["limit"] = int(text)
    order = values.get("order", ["desc"])[0]
    if order not in ORDERS:
        raise InvalidQuery("order must be asc or desc, not %r" % order[:32])
    changes["order"] = order
    if "cursor" in values:
        changes["after"] = decode_cursor(values["cursor"][0], order)
    return LogFilter(metadata=tuple(metadata), excluded_metadata=tuple(excluded), **changes)


def parse_time(parameter, text):
    """A moment from RFC 3339 text or an epoch number, as ingestion reads timestamps, or a duration before now (15m, 1h, 7d).

    A duration keeps a URL meaning "the last hour" whenever it is opened
    (the viewer's time presets are written so).
    """
    ago = RELATIVE_TIME.fullmatch(text.strip())
    if ago:
        try:
            return models.utcnow() - datetime.timedelta(seconds=int(ago.group(1)) * TIME_UNITS[ago.group(2)])
        except OverflowError:
            raise InvalidQuery("%s: %r reaches before the year 1" % (parameter, text[:32])) from None
    try:
        return records.parse_timestamp(text)
    except records.InvalidRecord as error:
        raise InvalidQuery("%s: %s" % (parameter, error)) from None


def parse_level(parameter, value):
    """One of records.LEVELS, read as ingestion reads levels (names, aliases, numbers)."""
    try:
        return records.parse_level(value.strip())
    except records.InvalidRecord as error:
        raise InvalidQuery("%s: %s" % (parameter, error)) from None


def parse_meta_path(name):
    """The metadata keys a meta.a.b parameter names."""
    path = tuple(name[len("meta."):].split("."))
    if not all(path):
        raise InvalidQuery("%s: a metadata filter is meta.<key>[.<key>...], with no empty key" % name[:64])
    if len(path) > records.MAX_DEPTH:
        # Deeper than stored metadata can nest, so it matches nothing.
        raise InvalidQuery("%s: a metadata path has at most %d keys" % (name[:64], records.MAX_DEPTH))
    if any("\x00" in key for key in path):
        # PostgreSQL refuses NUL in a parameter, and no stored key holds one: ingestion replaced it.
        raise InvalidQuery("%r: metadata keys cannot contain NUL" % name[:64])
    if any('"' in key for key in path):
        # SQLite's JSON paths cannot quote a double quote.
        raise InvalidQuery("%s: metadata keys with a double quote cannot be filtered on" % name[:64])
    return path


def meta_candidates(given):
    """The JSON values a metadata filter matches: each text as a string, and as a number if it reads as one."""
    for text in given:
        yield text
        if JSON_NUMBER.fullmatch(text):
            number = int(text) if text.lstrip("-").isdigit() else float(text)
            if isinstance(number, int) and not INT64[0] <= number <= INT64[1]:
                number = float(text)
            if number not in (float("inf"), float("-inf")):
                yield number


def encode_cursor(position, order):
    """An opaque cursor pointing just past this (timestamp, id) in this order."""
    timestamp, log_id = position
    data = orjson.dumps([records.format_time(timestamp), str(log_id), order])
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_cursor(text, order):
    """The (timestamp, id) a cursor points past; raises InvalidQuery for garbage or another order."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        timestamp, log_id, cursor_order = orjson.loads(data)
        position = (datetime.datetime.fromisoformat(timestamp.removesuffix("Z")), uuid.UUID(log_id))
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise InvalidQuery("cursor is not one this API returned") from None
    if cursor_order != order:
        raise InvalidQuery("cursor belongs to order=%s, not order=%s" % (cursor_order, order))
    return position


def unreachable(error):
    """True when a Peewee database error means the database cannot be reached, not that the statement failed."""
    if isinstance(error, peewee.InterfaceError):
        return True
    cause = driver_error(error)
    if hasattr(cause, "sqlite_errorname"):
        # SQLITE_ERROR is the statement's (parser stack overflow, too many
        # variables); the others are the file's: locked, unopenable, I/O, full.
        return cause.sqlite_errorname != "SQLITE_ERROR"
    # psycopg2: no SQLSTATE means the client lost or never had the server;
    # classes 08, 53, 57P and 58 are connection, resource and shutdown trouble.
    code = getattr(cause, "pgcode", None)
    return code is None or code[:2] in ("08", "53", "58") or code[:3] == "57P"


def timed_out(error):
    """True when a Peewee database error is PostgreSQL cancelling a statement that ran past its timeout."""
    return getattr(driver_error(error), "pgcode", None) == "57014"


def recovery_conflict(error):
    """True when a read replica cancelled a read whose rows the primary's changes (VACUUM, retention) replaced: retry it."""
    return getattr(driver_error(error), "pgcode", None) == "40001"


def driver_error(error):
    """The database driver's error that a Peewee error wraps, or the error itself."""
    while getattr(error, "orig", None) is not None:
        error = error.orig
    return error


@contextlib.contextmanager
def time_limited(seconds):
    """A read's transaction on PostgreSQL, its statements cancelled after seconds (0: never); none on SQLite.

    The transaction scopes the statement timeout, so a pooled connection does
    not carry it to ingestion; on SQLite a transaction would be BEGIN
    IMMEDIATE (models.py), holding off the writers for the read, and dev mode
    has no timeout.
    """
    if not models.on_postgres():
        yield
        return
    with models.database.atomic():
        # No JIT: compiling took 0.56 s of a 24-hour text search's histogram over 10 M rows
        # (bench/viewer.py), and a read that is short, as most are, never earns it back.
        settings = [("jit", "off")] + ([("statement_timeout", str(max(1, round(seconds * 1000))))] if seconds else [])
        models.database.execute_sql("SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings)),
                                    [value for setting in settings for value in setting])
        yield


def stored_time(value):
    """A datetime as the timestamp column compares: SQLite holds text with microseconds always."""
    return value if models.on_postgres() else value.isoformat(" ", timespec="microseconds")


def stored_id(value):
    """A UUID as the id column compares: PostgreSQL uuid, SQLite 32 hex digits."""
    return str(value) if models.on_postgres() else value.hex


def text_match(text):
    """Messages containing text, ignoring the case of ASCII letters only, as SQLite's LIKE does."""
    # Peewee escapes % and _; the C collation keeps PostgreSQL's ILIKE from folding other letters.
    message = Log.message.collate('"C"') if models.on_postgres() else Log.message
    return message.contains(text)


def metadata_match(path, candidates):
    """Logs whose metadata holds one of candidates at path: strings as strings, numbers as numbers."""
    if models.on_postgres():
        # -> with text keys reads object members only, as SQLite's quoted path labels do.
        target = Log.metadata
        for key in path:
            target = NodeList((target, SQL("->"), Value(key, converter=False)), parens=True)
        values = [NodeList((Value(orjson.dumps(value).decode(), converter=False), SQL("::jsonb")))
                  for value in candidates]
        return NodeList((target, SQL("IN"), EnclosedNodeList(values)))
    # json_extract returns 1 for true and the JSON text of an object: check the type as well.
    json_path = "$" + "".join('."%s"' % key for key in path)
    kind, value = fn.json_type(Log.metadata, json_path), fn.json_extract(Log.metadata, json_path)
    strings = [text for text in candidates if isinstance(text, str)]
    numbers = [number for number in candidates if not isinstance(number, str)]
    match = (kind == "text") & value.in_(strings)
    if numbers:
        match |= kind.in_(["integer", "real"]) & value.in_(numbers)
    return match


def metadata_mismatch(path, candidates):
    """Logs whose metadata holds none of candidates at path, those without the path included."""
    # IS NOT TRUE, not NOT: the match is NULL where the path is missing.
    return NodeList((NodeList((metadata_match(path, candidates),), parens=True), SQL("IS NOT TRUE")))


def stored_size():
    """The bytes of a log's message and metadata, as the database counts them without sending either."""
    if models.on_postgres():
        # octet_length(text) reads the stored length; jsonb has none, so its text is measured.
        return fn.octet_length(Log.message) + fn.octet_length(Log.metadata.cast("text"))
    return fn.length(Log.message.cast("BLOB")) + fn.length(Log.metadata.cast("BLOB"))


def ordered(query, order):
    """The query in (timestamp, id) order, newest first for desc."""
    if order == "desc":
        return query.order_by(Log.timestamp.desc(), Log.id.desc())
    return query.order_by(Log.timestamp, Log.id)


def matching(project_id, log_filter):
    """The query for all of the project's logs the filter matches, in no order, wherever its pages start."""
    query = Log.select().where(Log.project == project_id)
    if log_filter.levels != frozenset(records.LEVELS):
        query = query.where(Log.level.in_(sorted(log_filter.levels)))
    if log_filter.since is not None:
        query = query.where(Log.timestamp >= stored_time(log_filter.since))
    if log_filter.until is not None:
        query = query.where(Log.timestamp < stored_time(log_filter.until))
    if log_filter.text:
        query = query.where(text_match(log_filter.text))
    for path, candidates in log_filter.metadata:
        query = query.where(metadata_match(path, candidates))
    for path, candidates in log_filter.excluded_metadata:
        query = query.where(metadata_mismatch(path, candidates))
    return query


def select_logs(project_id, log_filter):
    """The query for one page of the project's logs (one more than the page, to tell if another follows)."""
    query = matching(project_id, log_filter)
    key = Tuple(Log.timestamp, Log.id)
    if log_filter.after is not None:
        timestamp, log_id = log_filter.after
        position = Tuple(stored_time(timestamp), stored_id(log_id))
        query = query.where(key < position if log_filter.order == "desc" else key > position)
    return ordered(query, log_filter.order).limit(log_filter.limit + 1)


def count_fitting(sizes, max_bytes):
    """How many of the leading logs of these sizes fit in max_bytes: at least one, so a page always moves on."""
    total = 0
    for count, size in enumerate(sizes):
        total += size + LOG_BYTES
        if count and total > max_bytes:
            return count
    return len(sizes)


def select_keys(project_id, log_filter, sized=True):
    """select_logs' query for the timestamp and id of its rows, and each log's stored_size() if sized."""
    columns = (Log.timestamp, Log.id) + ((stored_size(),) if sized else ())
    return select_logs(project_id, log_filter).select(*columns)


def stored_rows(query):
    """A query's rows as the driver returns them: on a page of keys, Peewee's conversions cost more than the query."""
    return models.database.execute(query).fetchall()


def as_python(key):
    """A (timestamp, id) as stored, as a datetime and a UUID."""
    return Log.timestamp.python_value(key[0]), Log.id.python_value(key[1])


def fetch_keys(project_id, log_filter, max_bytes=None):
    """The stored (timestamp, id) keys of one page of the project's logs, and the key the next starts after, or None.

    With max_bytes, the page stops before the log that would take its logs
    past that many bytes, sizes measured by the database.
    """
    rows = stored_rows(select_keys(project_id, log_filter, sized=bool(max_bytes)))
    count = min(len(rows), log_filter.limit)
    if max_bytes:
        count = count_fitting([row[2] for row in rows[:count]], max_bytes)
    keys = [row[:2] for row in rows[:count]]
    # A page of none (context's before=0) ends where it started.
    last = as_python(keys[-1]) if keys else log_filter.after
    return keys, last if count < len(rows) else None


def among(ids):
    """Logs whose id is one of these stored ids, in one parameter: a parameter per id cost more than the query."""
    if models.on_postgres():
        # psycopg2 hands uuid columns back as UUIDs; the text array takes any spelling.
        texts = [str(log_id) for log_id in ids]
        return Log.id == fn.ANY(Value(texts, converter=False, unpack=False).cast("uuid[]"))
    return NodeList((Log.id, SQL("IN (SELECT value FROM json_each("),
                     Value(orjson.dumps(list(ids)).decode(), converter=False), SQL("))")))


def load(project_id, keys, order):
    """The project's Log rows of these stored keys, in this order; one deleted since its key was read is missing."""
    if not keys:
        return []
    return list(ordered(Log.select().where(Log.project == project_id, among(log_id for _, log_id in keys)), order))


def fetch(project_id, log_filter, max_bytes=MAX_PAGE_BYTES):
    """One page of the project's Log rows within max_bytes (one at least), and the key the next starts after, or None.

    Keys and sizes first, then only the rows that fit: the driver holds a whole
    result in memory, so a page of large logs read at once would fill the process.
    """
    keys, after = fetch_keys(project_id, log_filter, max_bytes)
    return load(project_id, keys, log_filter.order), after


def page(project_id, log_filter, max_bytes=MAX_PAGE_BYTES):
    """One page of the project's logs as JSON-ready dicts, and the cursor of the next page or None."""
    rows, after = fetch(project_id, log_filter, max_bytes)
    return [render(row) for row in rows], encode_cursor(after, log_filter.order) if after else None


def walk(log_filter, read):
    """Yield the pages read(log_filter) returns oldest first, each starting after the last, until none follows."""
    log_filter = log_filter.replace(order="asc", after=None, limit=MAX_LIMIT)
    while True:
        items, after = read(log_filter)
        yield items
        if after is None:
            return
        log_filter = log_filter.replace(after=after)


def pages(project_id, log_filter, max_bytes=MAX_PAGE_BYTES):
    """Yield the filter's Log rows oldest first, a page of at most max_bytes of logs at a time."""
    return walk(log_filter, lambda page_filter: fetch(project_id, page_filter, max_bytes))


def logs_from(project_id, log_filter, floor, seen=None, max_bytes=MAX_PAGE_BYTES):
    """Yield every log the filter matches, oldest first; put those timestamped at or after floor into seen, if given.

    Only the window logs_since rereads is remembered, so seen stays small
    however long the range printed.
    """
    for rows in pages(project_id, log_filter, max_bytes):
        for log in rows:
            if seen is not None and log.timestamp >= floor:
                seen[log.id] = log.timestamp
            yield log


def key_pages(project_id, log_filter, floor):
    """Pages of the stored (timestamp, id) keys of the filter's logs timestamped at or after floor, oldest first."""
    since = max(floor, log_filter.since or floor)
    return walk(log_filter.replace(since=since), lambda page_filter: fetch_keys(project_id, page_filter))


def remember(project_id, log_filter, floor, seen):
    """Put the ids of the filter's logs timestamped at or after floor into seen, reading their keys only."""
    for keys in key_pages(project_id, log_filter, floor):
        seen.update((log_id, timestamp) for timestamp, log_id in map(as_python, keys))


def logs_since(project_id, log_filter, floor, seen, max_bytes=MAX_PAGE_BYTES):
    """Yield the filter's logs timestamped at or after floor, oldest first, skipping ids in seen.

    seen maps the id of each log yielded to its timestamp; ids older than floor
    are dropped from it, so it holds one window's worth. Repeated with a
    moving floor, this shows every log once, including logs written late.
    """
    for log_id in [log_id for log_id, timestamp in seen.items() if timestamp < floor]:
        del seen[log_id]
    # Mostly logs already shown: read their keys only, then the new ones' sizes,
    # then the new ones in full, at most max_bytes of them at a time.
    for keys in key_pages(project_id, log_filter, floor):
        new = [key[1] for key in keys if as_python(key)[1] not in seen]
        if not new:
            continue
        sized = stored_rows(ordered(Log.select(Log.timestamp, Log.id, stored_size())
                                    .where(Log.project == project_id, among(new)), "asc"))
        while sized:
            count = count_fitting([row[2] for row in sized], max_bytes)
            for row in load(project_id, [row[:2] for row in sized[:count]], "asc"):
                seen[row.id] = row.timestamp
                yield row
            sized = sized[count:]


def find_row(project_id, text):
    """The project's Log row with this id (any UUID spelling), or None; InvalidQuery for a non-UUID."""
    try:
        log_id = uuid.UUID(text)
    except ValueError:
        raise InvalidQuery("id must be a UUID, not %r" % text[:64]) from None
    return Log.get_or_none(Log.project == project_id, Log.id == stored_id(log_id))


def find_log(project_id, text):
    """The project's log with this id (any UUID spelling) as JSON-ready dict, or None."""
    log = find_row(project_id, text)
    return render(log) if log is not None else None


def parse_only(pairs, own=()):
    """The LogFilter of pairs and the text of the route's own parameters (in own); page parameters refused."""
    filters, given = [], {}
    for name, value in pairs:
        if name in own and name in given:
            raise InvalidQuery("%s is given more than once; give it once" % name)
        if name in own:
            given[name] = value
        elif name in PAGE_PARAMETERS:
            raise InvalidQuery("%s is a parameter of GET /logs' pages, not of this route" % name)
        else:
            filters.append((name, value))
    return parse_filter(filters), given


def parse_count(name, given, default, maximum):
    """A whole number parameter from 0 to maximum, default if not given."""
    text = given.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and int(text) <= maximum):
        raise InvalidQuery("%s must be a whole number from 0 to %d, not %r" % (name, maximum, text[:32]))
    return int(text)


def micros(value):
    """Microseconds from the Unix epoch to a naive UTC datetime."""
    return (value - EPOCH) // datetime.timedelta(microseconds=1)


def stored_bucket(origin, step):
    """Each log's bucket of step microseconds from origin, computed by the database: its start on PostgreSQL, its index on SQLite."""
    if models.on_postgres():
        # date_bin (PostgreSQL 14) bins the stored microseconds exactly, in integers: at 1.4 M rows
        # it took about 400 ms where rounding date_part('epoch') took 550-1000 (docs/api.md, histogram).
        stride = Value("%d microseconds" % step, converter=False).cast("interval")
        return fn.date_bin(stride, Log.timestamp, EPOCH + datetime.timedelta(microseconds=origin))
    # The column holds "YYYY-MM-DD HH:MM:SS.ffffff": whole seconds, then the digits after the point
    # (strftime alone would round them to milliseconds, 10:00:29.999999 to 10:00:30).
    stored = (fn.strftime("%s", fn.substr(Log.timestamp, 1, 19)).cast("INTEGER") * 1000000
              + fn.substr(Log.timestamp, 21, 6).cast("INTEGER"))
    return (stored - origin) / step


def bucket_width(since, until):
    """The first of BUCKET_WIDTHS (then doubling) in milliseconds that splits since..until into MAX_BUCKETS or fewer."""
    widths = BUCKET_WIDTHS + [BUCKET_WIDTHS[-1] * 2 ** power for power in range(1, 64)]
    for width in widths:
        step = width * 1000
        if -(-micros(until) // step) - micros(since) // step <= MAX_BUCKETS:
            return width
    raise InvalidQuery("since..until is too wide")


def counted_rows(project_id, log_filter, origin, step):
    """(bucket index, level, logs) of the matching rows between since and until, counted row by row."""
    rows = stored_rows(matching(project_id, log_filter)
                       .select(stored_bucket(origin, step), Log.level, fn.COUNT(SQL("*")))
                       .group_by(SQL("1"), SQL("2")))
    for bucket, level, number in rows:
        yield (micros(bucket) - origin) // step if models.on_postgres() else bucket, level, number


def counted_minutes(project_id, log_filter, origin, step):
    """(bucket index, level, logs) of the matching logs in the whole minutes since..until, from models.LogCount."""
    origin_minute, minutes = origin // ROLLUP_STEP, step // ROLLUP_STEP
    since, until = micros(log_filter.since) // ROLLUP_STEP, micros(log_filter.until) // ROLLUP_STEP
    # Never below zero: minute >= since >= origin_minute, so integer division floors on both backends.
    bucket = (models.LogCount.minute - origin_minute) / minutes
    query = (models.LogCount.select(bucket, models.LogCount.level, fn.SUM(models.LogCount.number))
             .where(models.LogCount.project == project_id, models.LogCount.minute >= since,
                    models.LogCount.minute < until)
             .group_by(SQL("1"), SQL("2")))
    if log_filter.levels != frozenset(records.LEVELS):
        query = query.where(models.LogCount.level.in_(sorted(log_filter.levels)))
    for index, level, number in query.tuples():
        yield index, level, int(number)


def bucket_counts(project_id, log_filter, origin, step):
    """(bucket index, level, logs) of the logs the filter matches between its since and until.

    Buckets of whole minutes read the minutes wholly inside the range from the
    per-minute counts the database writer keeps, and only the part-minutes at
    its edges from the rows; other filters (text, metadata) need the rows.
    """
    if log_filter.text or log_filter.metadata or log_filter.excluded_metadata or step % ROLLUP_STEP:
        yield from counted_rows(project_id, log_filter, origin, step)
        return
    first = -(-micros(log_filter.since) // ROLLUP_STEP) * ROLLUP_STEP
    last = micros(log_filter.until) // ROLLUP_STEP * ROLLUP_STEP
    if first >= last:
        yield from counted_rows(project_id, log_filter, origin, step)
        return
    first, last = (EPOCH + datetime.timedelta(microseconds=edge) for edge in (first, last))
    yield from counted_minutes(project_id, log_filter.replace(since=first, until=last), origin, step)
    for since, until in ((log_filter.since, first), (last, log_filter.until)):
        if since < until:
            yield from counted_rows(project_id, log_filter.replace(since=since, until=until), origin, step)


def histogram(project_id, log_filter, now):
    """Counts per level of the logs the filter matches in time buckets of one width, empty ones included.

    Buckets start at whole multiples of their width from the Unix epoch, so the
    bars of a moving range stay put; the first and last may reach past
    since and until, and count only the logs between those.
    """
    try:
        until = log_filter.until or now
        since = log_filter.since or until - HISTOGRAM_RANGE
        if since >= until:
            raise InvalidQuery("since must be before until")
        width = bucket_width(since, until)
        step = width * 1000
        origin = micros(since) // step * step
        starts = [EPOCH + datetime.timedelta(microseconds=origin + step * index)
                  for index in range(-(-(micros(until) - origin) // step))]
    except OverflowError:
        raise InvalidQuery("since..until must lie between the years 1 and 9999") from None
    counts = [dict.fromkeys(records.LEVELS, 0) for _ in starts]
    for index, level, number in bucket_counts(project_id, log_filter.replace(since=since, until=until),
                                              origin, step):
        counts[index][level] += number
    return {"since": records.format_time(since), "until": records.format_time(until), "interval_ms": width,
            "total": sum(sum(bucket.values()) for bucket in counts),
            "buckets": [{"start": records.format_time(start), "counts": bucket, "total": sum(bucket.values())}
                        for start, bucket in zip(starts, counts)]}


def context(project_id, text, log_filter, before, after, max_bytes=MAX_PAGE_BYTES):
    """The project's log with this id and the logs the filter matches just before and after it, or None.

    Each side holds at most half of max_bytes (one log at least), and a cursor
    continuing it in GET /logs (order desc before, asc after), None at the end.
    """
    log = find_row(project_id, text)
    if log is None:
        return None
    answer = {"log": render(log)}
    for side, order, count in (("before", "desc", before), ("after", "asc", after)):
        side_filter = log_filter.replace(order=order, limit=count, after=(log.timestamp, log.id))
        keys, last = fetch_keys(project_id, side_filter, max(1, max_bytes // 2))
        answer[side] = [render(row) for row in load(project_id, keys, "asc")]
        answer[side + "_cursor"] = encode_cursor(last, order) if last else None
    return answer


def parse_live_cursor(text):
    """(feed position, ids of that entry already read) from a GET /logs/live cursor."""
    found = LIVE_CURSOR.fullmatch(text)
    if not found:
        raise InvalidQuery("cursor must be one that GET /logs/live gave, not %r" % text[:64])
    return found[1], int(found[2])


def live(project_id, log_filter, feed, cursor, max_bytes=MAX_PAGE_BYTES):
    """The logs the filter matches among those stored after the cursor, in the order the writer stored them.

    feed(position, inclusive, count) reads the project's live feed (spool.feed):
    the ids the database writer stored, batch by batch, in commit order. The
    filter is the one every read applies (matching()), so the live view and the
    list can never disagree. At most MAX_LIVE_IDS ids and max_bytes of logs (one
    at least) are taken; the cursor returned says where the next read starts,
    inside a batch if need be. Returns (Log rows, cursor, more waiting, gap):
    a gap means that entries after the cursor were dropped from the feed
    (spool.FEED_SECONDS, FEED_MAX_IDS) before they were read.
    """
    position, taken = parse_live_cursor(cursor)
    try:
        entries, gap = feed(position, taken > 0, MAX_LIVE_ENTRIES)
    except ValueError:  # a position of the other backend's feed, or out of its range
        raise InvalidQuery("cursor must be one that GET /logs/live gave, not %r" % cursor[:64]) from None
    unread = []  # (the cursor once it is read, id, its level if the feed says)
    for entry, items in entries:
        first = taken if entry == position else 0
        unread.extend(((entry, 0 if index + 1 == len(items) else index + 1),) + feed_item(items[index])
                      for index in range(first, len(items)))
        if len(unread) >= MAX_LIVE_IDS:
            break
    unread = unread[:MAX_LIVE_IDS]
    stored = {}  # stored id → id as the feed spells it
    # A level the filter leaves out needs no lookup: a viewer of errors reads only the errors' rows.
    for log_id in {log_id for _, log_id, level in unread if level is None or level in log_filter.levels}:
        try:
            stored[stored_id(uuid.UUID(log_id))] = log_id
        except ValueError:
            continue
    sizes = {}
    if stored:
        rows = stored_rows(matching(project_id, log_filter).select(Log.id, stored_size()).where(among(stored)))
        sizes = {stored[key if isinstance(key, str) else str(key)]: size for key, size in rows}
    chosen, total, read = [], 0, 0
    for _, log_id, _ in unread:
        if log_id in sizes:
            total += sizes[log_id] + LOG_BYTES
            if chosen and total > max_bytes:
                break
            chosen.append(log_id)
        read += 1
    more = read < len(unread) or len(entries) == MAX_LIVE_ENTRIES or len(unread) == MAX_LIVE_IDS
    if read:
        cursor = "%s:%d" % unread[read - 1][0]
    wanted = set(chosen)
    rows = {str(row.id): row for row in Log.select().where(Log.project == project_id, among(
        key for key, log_id in stored.items() if log_id in wanted))} if chosen else {}
    # An id published twice (a redelivered batch) is shown once.
    shown = list(dict.fromkeys(log_id for log_id in chosen if log_id in rows))
    return [rows[log_id] for log_id in shown], cursor, more, gap


def feed_item(text):
    """(id, level) of an item of the live feed: the level's initial, then the id (tasks.written_ids)."""
    return (text[1:], FEED_LEVELS.get(text[0])) if len(text) == 37 else (text, None)


def render(log):
    """A Log row as the API shows it: canonical id, RFC 3339 UTC times with Z, metadata as an object."""
    return {"id": str(log.id), "timestamp": records.format_time(log.timestamp), "level": log.level,
            "message": log.message, "metadata": log.metadata,
            "received_at": records.format_time(log.received_at)}
