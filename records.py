"""Turn request bodies into normalized log records that every writer can store.

Pure functions, no I/O: whatever normalize() and normalize_many() return is
safe for PostgreSQL text and jsonb, SQLite and a JSON line, so the consumer
never meets a record it cannot write.
"""
import datetime
import functools
import math
import os
import re
import threading
import time
import uuid

import orjson

import wire

LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")

LEVEL_NAMES = {
    # silly and http: npm's (and winston's) levels, below debug and below info.
    "trace": "DEBUG", "verbose": "DEBUG", "debug": "DEBUG", "silly": "DEBUG", "http": "DEBUG",
    "info": "INFO", "information": "INFO", "notice": "INFO",
    "warn": "WARN", "warning": "WARN",
    "error": "ERROR", "err": "ERROR",
    "critical": "CRITICAL", "crit": "CRITICAL", "fatal": "CRITICAL",
    "alert": "CRITICAL", "emerg": "CRITICAL", "emergency": "CRITICAL",
    "panic": "CRITICAL",
}

# Syslog severities 0-7.
SYSLOG_LEVELS = ("CRITICAL", "CRITICAL", "CRITICAL", "ERROR", "WARN", "INFO",
                 "INFO", "DEBUG")

# The top-level names normalize() reads as they are.
CANONICAL = frozenset(("message", "level", "timestamp", "metadata", "id"))

# Field → the names shippers use for it, the canonical name first.
ALIASES = {
    "message": ("message", "msg", "@m"),
    "level": ("level", "severity", "levelname", "lvl", "@l"),
    "timestamp": ("timestamp", "time", "ts", "@timestamp", "@t", "dt"),
}

NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines", "application/jsonlines"}
# curl -d sends form-urlencoded unless told otherwise; take it as JSON.
JSON_TYPES = {"application/json", "text/json", "text/plain",
              "application/x-www-form-urlencoded", ""}

# Deeper metadata than this is refused: orjson writes no deeper, and it is
# never a real log.
MAX_DEPTH = 250
EPOCH = datetime.datetime(1970, 1, 1)
# orjson writes integers in this range only; it reads longer ones as floats.
INT_RANGE = (-2**63, 2**64 - 1)
# Lone UTF-16 surrogates: JSON text may escape them ("\ud800"), UTF-8 cannot hold them.
SURROGATES = re.compile("[\ud800-\udfff]")


class InvalidBody(ValueError):
    """The request body as a whole cannot be read."""


class UnsupportedMediaType(ValueError):
    """The request body is in a format LogFlow does not read."""


class InvalidRecord(ValueError):
    """One record of a batch cannot be accepted."""


class TooManyRecords(ValueError):
    """The request holds more records than LOGFLOW_MAX_RECORDS; found while scanning, before they are built."""

    def __init__(self, limits, found=None, beside=""):
        super().__init__("a request may hold at most %d records%s%s" % (
            limits.max_records, "" if found is None else ", not %d" % found, beside))


class Unread(list):
    """Records found in a body but not built yet: each item is a function that reads one record
    (raising InvalidBody if it cannot), or the InvalidRecord that refused it unread.

    normalize_many() reads them one at a time and keeps only their JSON, so a
    request never holds all its records' objects at once.
    """


# A body is parsed whole only if it is at most SENT_FACTOR records' size
# and could build at most this many JSON values (by values_in); else it is read
# a record at a time. Measured with tracemalloc: orjson builds at most about 100
# bytes of objects per value counted (30 MB here), and its parser takes 13
# times the bytes it reads while it runs (13 MB for 1 MiB).
MAX_VALUES_AT_ONCE = 300_000
# How far a record's size as sent may exceed LOGFLOW_MAX_RECORD_BYTES before it
# is refused unread: pretty-printed JSON and OTLP's attributes take more room
# than the record as stored.
SENT_FACTOR = 4


def values_in(data, start=0, end=None):
    """An upper bound on the JSON values and keys in data[start:end], counted in C without parsing.

    It is also a lower bound on the bytes of their JSON as stored: every
    bracket, comma, colon and quote counted is written out again.
    """
    end = len(data) if end is None else end
    return (data.count(b"{", start, end) + data.count(b"[", start, end) + data.count(b",", start, end)
            + data.count(b":", start, end) + data.count(b'"', start, end) // 2)


def too_large(limits):
    """The InvalidRecord of a record larger than LOGFLOW_MAX_RECORD_BYTES as stored."""
    return InvalidRecord("record is larger than %d bytes as stored" % limits.max_record_bytes)


def too_large_as_sent(limits, what=""):
    """The InvalidRecord of a record refused unread: larger than SENT_FACTOR times LOGFLOW_MAX_RECORD_BYTES as sent."""
    return InvalidRecord("record is larger than %d bytes as sent%s" % (SENT_FACTOR * limits.max_record_bytes, what))


def small_enough_to_parse_whole(data, limits):
    """True when data may be parsed at once: no record in it can be too large as sent, nor the objects too many."""
    # values_in() counts at most one value per byte: short bodies need no count.
    return len(data) <= SENT_FACTOR * limits.max_record_bytes and (
        len(data) <= MAX_VALUES_AT_ONCE or values_in(data) <= MAX_VALUES_AT_ONCE)


def media_type_of(content_type):
    """The media type of a Content-Type header, lower case, without its parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def parse_body(data, content_type, limits):
    """The raw records of a JSON object, JSON array or NDJSON body: a list, or an Unread list for a large one.

    Raises InvalidBody, UnsupportedMediaType, or TooManyRecords as soon as
    more than limits.max_records records are found.
    """
    media_type = media_type_of(content_type)
    if media_type in NDJSON_TYPES:
        return _parse_lines(data, limits)
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            "Content-Type %s is not supported; send application/json or "
            "application/x-ndjson" % media_type)
    start = wire.skip_whitespace(data, 0)
    if start == len(data):
        raise InvalidBody("the request body is empty")
    if not small_enough_to_parse_whole(data, limits):
        return _scan_json(data, start, limits)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        return _lines_labelled_json(data, start, limits, error)
    raws = value if isinstance(value, list) else [value]
    if len(raws) > limits.max_records:
        raise TooManyRecords(limits, len(raws))
    return raws


def _scan_json(data, start, limits):
    """parse_body() of a large JSON body: its records found by a scan, each to be read on its own."""
    try:
        if data[start:start + 1] == b"[":
            spans, end = wire.array_spans(data, start, limits.max_records)
        else:
            spans = [(start, wire.value_end(data, start))]
            end = spans[0][1]
        if wire.skip_whitespace(data, end) != len(data):
            raise wire.Unreadable("trailing characters at byte %d" % end)
    except wire.TooMany:
        raise TooManyRecords(limits) from None
    except wire.Unreadable as error:
        return _lines_labelled_json(data, start, limits, error)
    return _unread(data, spans, limits, numbered=False)


def _lines_labelled_json(data, start, limits, error):
    """The records of a body labelled JSON that is not: NDJSON, which shippers often send so, else InvalidBody.

    It is NDJSON if its first line holds one whole JSON value: invalid
    pretty-printed JSON is a 400, however many lines it has (not a 413 for
    more lines than records a request may hold).
    """
    first_line = data[start:data.find(b"\n", start)] if data.find(b"\n", start) >= 0 else None
    if first_line is not None:
        try:
            if wire.skip_whitespace(first_line, wire.value_end(first_line, 0)) == len(first_line):
                return _parse_lines(data, limits)
        except wire.Unreadable:
            pass  # not NDJSON either
    raise InvalidBody("the body is not valid JSON: %s" % error) from None


def _parse_lines(data, limits):
    """The records of an NDJSON body, a line each; an Unread list when the body is large."""
    try:
        spans = wire.line_spans(data, limits.max_records)
    except wire.TooMany:
        raise TooManyRecords(limits) from None
    if not spans:
        raise InvalidBody("the request body holds no records")
    if not small_enough_to_parse_whole(data, limits):
        return _unread(data, spans, limits, numbered=True)
    view = memoryview(data)
    return [_read_json(view, start, end, numbered=True) for start, end in spans]


def _unread(data, spans, limits, numbered):
    """An Unread list of the JSON records at spans; those that could not be stored in max_record_bytes are refused unread."""
    unread = Unread()
    view = memoryview(data)
    for start, end in spans:
        if end - start > SENT_FACTOR * limits.max_record_bytes:
            unread.append(too_large_as_sent(limits))
        elif values_in(data, start, end) > limits.max_record_bytes:
            # Every bracket, comma, colon and quote counted would be stored.
            unread.append(too_large(limits))
        else:
            unread.append(functools.partial(_read_json, view, start, end, numbered))
    return unread


def _read_json(view, start, end, numbered):
    """The JSON value in view[start:end]; InvalidBody naming its line (numbered) or the body."""
    try:
        return orjson.loads(view[start:end])
    except orjson.JSONDecodeError as error:
        if numbered:
            raise InvalidBody("line %d is not valid JSON: %s" % (_line_number(view.obj, start), error)) from None
        raise InvalidBody("the body is not valid JSON: %s" % error) from None


def _line_number(data, position):
    """The 1-based number of the line holding position."""
    return data.count(b"\n", 0, position) + 1


def format_time(value):
    """A naive UTC datetime as RFC 3339 with microseconds and Z."""
    return value.isoformat(timespec="microseconds") + "Z"


# Every record of a request without a timestamp of its own gets the same
# received_at: formatted once per request rather than per record.
format_received = functools.lru_cache(maxsize=64)(format_time)


def normalize(raw, received_at, limits, oldest_day=None):
    """One record in canonical form, plus a list of warnings; raises InvalidRecord.

    A timestamp before the UTC day oldest_day (None: no bound) is replaced by received_at.
    """
    record, warnings, _ = _made_storable(*_canonical(raw, received_at, limits, _midnight(oldest_day)), limits)
    return record, warnings


def normalize_many(raws, received_at, limits, oldest_day=None):
    """normalize() of each raw record, and the JSON of the valid ones' list, encoded once.

    Returns (count of valid records, their JSON list, errors, warnings):
    errors and warnings are (index in raws, text) pairs in index order. Most
    requests hold no NUL, no null and nothing JSON cannot carry, and are
    smaller than one record may be: one encoding of the whole list shows it.
    An Unread list is read a record at a time instead (and emptied).
    """
    oldest = _midnight(oldest_day)
    if isinstance(raws, Unread):
        return _normalize_unread(raws, received_at, limits, oldest)
    valid, errors = [], []
    for index, raw in enumerate(raws):
        try:
            valid.append((index, *_canonical(raw, received_at, limits, oldest)))
        except InvalidRecord as error:
            errors.append((index, str(error)))
    encoded = _plain_json([record for _, record, _ in valid])
    # +2: the list's brackets; no record in a list this short is too large.
    if encoded is None or len(encoded) > limits.max_record_bytes + 2:
        # Some record needs a closer look: each on its own, as normalize() does.
        storable, parts = [], []
        for index, record, notes in valid:
            try:
                record, notes, part = _made_storable(record, notes, limits)
            except InvalidRecord as error:
                errors.append((index, str(error)))
                continue
            storable.append((index, record, notes))
            parts.append(part)
        errors.sort(key=lambda pair: pair[0])
        valid = storable
        encoded = b"[" + b",".join(parts) + b"]"
    return len(valid), encoded, errors, [(index, note) for index, _, notes in valid for note in notes]


def _midnight(day):
    """The first moment of a UTC day, as timestamps compare (None stays None)."""
    return None if day is None else datetime.datetime.combine(day, datetime.time())


def _normalize_unread(unread, received_at, limits, oldest):
    """normalize_many() of an Unread list: each record read, normalized and encoded, then let go."""
    parts, errors, warnings = [], [], []
    for index in range(len(unread)):
        item, unread[index] = unread[index], None
        try:
            if isinstance(item, InvalidRecord):
                raise item
            _, notes, part = _made_storable(*_canonical(item(), received_at, limits, oldest), limits)
        except InvalidRecord as error:
            errors.append((index, str(error)))
            continue
        parts.append(part)
        warnings.extend((index, note) for note in notes)
    return len(parts), b"[" + b",".join(parts) + b"]", errors, warnings


# Extra list levels around a list of records, so that orjson's own limit of
# 254 levels refuses exactly the metadata nested deeper than MAX_DEPTH: the
# list and the record are two levels above the metadata.
DEPTH_PADDING = 254 - MAX_DEPTH - 2


def _encoded(records):
    """orjson's encoding of a list of records; JSONEncodeError if one holds metadata deeper than MAX_DEPTH, or what JSON cannot carry."""
    return orjson.dumps([[records]])[DEPTH_PADDING:-DEPTH_PADDING]


def _plain_json(records):
    """_encoded(records) when they hold no NUL escape and no null (which may stand for NaN), else None."""
    try:
        encoded = _encoded(records)
    except orjson.JSONEncodeError:
        return None
    return None if b"\\u0000" in encoded or b"null" in encoded else encoded


def _canonical(raw, received_at, limits, oldest=None):
    """normalize() but for the storability of its values: (record, warnings); raises InvalidRecord.

    oldest is the first moment a timestamp may keep (None: any).
    """
    if not isinstance(raw, dict):
        raise InvalidRecord("a record must be a JSON object")
    warnings = []
    if raw.keys() <= CANONICAL and None not in (raw.get("message", 0), raw.get("level", 0),
                                                raw.get("timestamp", 0)):
        # The common case, only canonical names and no nulls: nothing to
        # look up under aliases, nothing to move into metadata.
        fields = raw
        extra = False
    else:
        # field → the name it was sent under and its value; (None, None) if absent.
        sent = {field: _pick(raw, names) for field, names in ALIASES.items()}
        fields = {field: value for field, (_, value) in sent.items()}
        extra = True

    message = fields.get("message")
    if message is None:
        raise InvalidRecord("message is required")
    if not isinstance(message, str):
        raise InvalidRecord("message must be a string")
    # surrogatepass: a lone surrogate counts as the 3 bytes of the U+FFFD replacing it.
    if len(message.encode("utf-8", "surrogatepass")) > limits.max_message_bytes:
        raise InvalidRecord("message is longer than %d bytes" % limits.max_message_bytes)

    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise InvalidRecord("metadata must be a JSON object")
    elif extra:
        metadata = dict(metadata)
    if extra:
        _keep_extra_fields(raw, metadata, {name for name, _ in sent.values()})

    stamp = fields.get("timestamp")
    timestamp = None
    if stamp is not None:
        timestamp = parse_timestamp(stamp)
        if (timestamp - received_at).total_seconds() > limits.future_window_seconds:
            replaced = "timestamp is too far in the future; replaced by the time received"
        elif oldest is not None and timestamp < oldest:
            # Older than the project keeps: it would be pruned within the hour, and a
            # request could otherwise open a daily file for each of a thousand days.
            replaced = ("timestamp is before %s, older than this project keeps; replaced by the time received"
                        % oldest.date())
        else:
            replaced = None
        if replaced:
            # A copy: the caller's metadata is left as it was sent.
            metadata = dict(metadata)
            metadata[_free_key("original_timestamp", metadata)] = stamp
            warnings.append(replaced)
            timestamp = None

    record = {
        "id": parse_id(raw.get("id")),
        "level": parse_level(fields.get("level")),
        "message": message,
        "metadata": metadata,
        "timestamp": format_received(received_at) if timestamp is None else format_time(timestamp),
    }
    return record, warnings


def _made_storable(record, warnings, limits):
    """A record of _canonical() and its warnings, made storable, and its JSON; raises InvalidRecord.

    The JSON is the record's as an item of a list, as the spool payload holds
    it: deeper metadata than MAX_DEPTH is refused here, and the record's size
    as stored is its length.
    """
    # Fast path: a record orjson writes without NUL escapes or nulls (which
    # may stand for NaN) is storable as it is; only the rest is walked.
    encoded = _plain_json([record])
    if encoded is None:
        replaced = set()
        record = _storable(record, 0, replaced)
        try:
            encoded = _encoded([record])
        except orjson.JSONEncodeError:
            raise InvalidRecord("metadata is nested deeper than %d levels" % MAX_DEPTH) from None
        if "NUL" in replaced:
            warnings.append("NUL characters were replaced by U+FFFD")
        if "surrogate" in replaced:
            warnings.append("lone UTF-16 surrogates were replaced by U+FFFD")
    if len(encoded) - 2 > limits.max_record_bytes:
        raise too_large(limits)
    return record, warnings, encoded[1:-1]


def _pick(raw, names):
    """The first of names that raw holds a non-null value for, and that value."""
    for name in names:
        value = raw.get(name)
        if value is not None:
            return name, value
    return None, None


def _keep_extra_fields(raw, metadata, used):
    """Move every top-level field LogFlow does not read itself into metadata."""
    for key, value in raw.items():
        if key in used or key in ("id", "metadata"):
            continue
        # An explicit metadata key wins; the top-level field is kept beside it.
        metadata[_free_key(key, metadata)] = value


def _free_key(name, *taken):
    """name, with as many leading underscores as it takes to be in none of taken."""
    while any(name in keys for keys in taken):
        name = "_" + name
    return name


# Per thread: the random endings of the next ids (_random_endings).
_entropy = threading.local()
# A forked child must not hand out the ids left in its parent's pool.
os.register_at_fork(after_in_child=lambda: _entropy.__dict__.clear())
VARIANT_DIGITS = "89ab" * 4
# The last millisecond random_uuid() saw, and its ids' first 15 characters ("tttttttt-tttt-7").
_millisecond = (None, "")


def random_uuid():
    """A new time-ordered (version 7) UUID as text: Unix milliseconds, then 74 random bits.

    The time prefix keeps inserts into the primary key's index at its right
    edge instead of all over it: with 3,000,000 rows stored, COPY took 2.2x
    less time than with random version 4 ids (docs/benchmarks.md).
    """
    global _millisecond
    endings = getattr(_entropy, "endings", None)
    if not endings:
        endings = _entropy.endings = _random_endings()
    now = time.time_ns() // 1_000_000
    if now != _millisecond[0]:
        # One prefix per millisecond, whichever thread makes it: a tuple is replaced whole.
        _millisecond = now, time_ordered_uuid(now, "0" * 32, "7")[:15]
    return _millisecond[1] + endings.pop()


def _random_endings():
    """256 random id endings ("rrr-vrrr-rrrrrrrrrrrr", 74 random bits each) from one system call.

    A system call per id released and re-took the GIL for every record;
    formatting them together takes a sixth off an id's cost (0.69 -> 0.57 µs).
    """
    pool = os.urandom(4096).hex()
    # The variant digit's two high bits are 10.
    return ["%s-%s%s-%s" % (pool[at + 13:at + 16], VARIANT_DIGITS[int(pool[at + 16], 16)],
                            pool[at + 17:at + 20], pool[at + 20:at + 32]) for at in range(0, 8192, 32)]


def time_ordered_uuid(milliseconds, hex_digits, version):
    """A UUID of 48 bits of Unix milliseconds and the last 80 bits' worth of 32 hex digits (RFC 9562 layout).

    Version "7" for random digits; "8" for digits derived from content.
    """
    text = "%012x" % (milliseconds & 0xFFFFFFFFFFFF)
    # The variant digit's two high bits are 10.
    return "%s-%s-%s%s-%s%s-%s" % (text[:8], text[8:12], version, hex_digits[13:16],
                                   VARIANT_DIGITS[int(hex_digits[16], 16)], hex_digits[17:20], hex_digits[20:32])


def parse_id(value):
    """A client-chosen UUID in canonical form, or a new random one."""
    if value is None:
        return random_uuid()
    if not isinstance(value, str):
        raise InvalidRecord("id must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRecord("id must be a UUID, not %r" % value[:64]) from None


def parse_level(value):
    """One of LEVELS from a name or a syslog or pino/bunyan number."""
    if value is None:
        return "INFO"
    if isinstance(value, str):
        name = value.strip().lower()
        if name in LEVEL_NAMES:
            return LEVEL_NAMES[name]
        # isascii: "²" is a digit to isdigit() but not to int().
        if not (name.isascii() and name.isdigit()):
            raise InvalidRecord("unknown level %r" % value[:32])
        try:
            value = int(name)
        except ValueError:  # more digits than int() reads (4,300)
            raise InvalidRecord("level %r... is not a known severity" % value[:32]) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord("level must be a name or a number")
    # isfinite() of an int too large for a float raises; ints are finite anyway.
    if isinstance(value, float) and not math.isfinite(value) or value < 0:
        raise InvalidRecord("level %.32r is not a known severity" % value)
    if value < 8:
        return SYSLOG_LEVELS[int(value)]
    # pino and bunyan: 10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal.
    for limit, level in ((20, "DEBUG"), (30, "INFO"), (40, "WARN"), (50, "ERROR")):
        if value <= limit:
            return level
    return "CRITICAL"


def parse_timestamp(value):
    """A naive UTC datetime from RFC 3339 / ISO 8601 text or epoch s, ms, µs or ns."""
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.replace(".", "", 1).isdigit():
            try:
                number = float(text) if "." in text else int(text)
            except ValueError:  # more digits than int() reads (4,300)
                raise InvalidRecord("timestamp %r... is out of range" % value[:64]) from None
            return _from_epoch(number)
        try:
            parsed = datetime.datetime.fromisoformat(text.upper())
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return parsed
        except (ValueError, OverflowError):
            raise InvalidRecord("timestamp %r is not RFC 3339 / ISO 8601" % value[:64]) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord("timestamp must be a string or a number")
    return _from_epoch(value)


def _from_epoch(value):
    if isinstance(value, float) and not math.isfinite(value) or value < 0:
        raise InvalidRecord("timestamp %.64r is out of range" % value)
    # Judge the unit by magnitude: seconds reach 1e11 only in the year 5138.
    for limit, per_second in ((1e11, 1), (1e14, 10**3), (1e17, 10**6)):
        if value < limit:
            break
    else:
        per_second = 10**9
    try:
        if isinstance(value, int):
            microseconds = value * 10**6 // per_second
        else:
            # Near the float maximum, value * 10**6 is infinite and round() overflows.
            microseconds = round(value * 10**6 / per_second)
        return EPOCH + datetime.timedelta(microseconds=microseconds)
    except OverflowError:
        raise InvalidRecord("timestamp %.64r is out of range" % value) from None


def _storable(value, depth, replaced):
    """A copy of value that every store takes; adds "NUL" or "surrogate" to replaced if it changed text."""
    if isinstance(value, str):
        return _storable_text(value, replaced)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if INT_RANGE[0] <= value <= INT_RANGE[1]:
            return value
        # What orjson does with such a number in a request body; it could not write it back.
        try:
            value = float(value)
        except OverflowError:
            raise InvalidRecord("metadata holds a number beyond the floating point range") from None
    if isinstance(value, float):
        # JSON has no NaN or infinity: orjson would write null, not the value sent.
        if not math.isfinite(value):
            raise InvalidRecord("metadata holds %r, which JSON cannot carry" % value)
        return value
    if not isinstance(value, (dict, list)):
        raise InvalidRecord("a record holds only JSON values, not %s" % type(value).__name__)
    if depth > MAX_DEPTH:
        raise InvalidRecord("metadata is nested deeper than %d levels" % MAX_DEPTH)
    if isinstance(value, list):
        return [_storable(item, depth + 1, replaced) for item in value]
    copy = {}
    for key, item in value.items():
        name = _storable(key, depth, replaced)
        if name != key:
            # The replacement may spell a key the object has too; keep both.
            name = _free_key(name, value, copy)
        copy[name] = _storable(item, depth + 1, replaced)
    return copy


def _storable_text(text, replaced):
    """text without NUL characters (PostgreSQL refuses them) or lone surrogates (UTF-8 cannot hold them)."""
    if "\x00" in text:
        replaced.add("NUL")
        text = text.replace("\x00", "\ufffd")
    if not text.isascii() and SURROGATES.search(text):
        replaced.add("surrogate")
        text = SURROGATES.sub("\ufffd", text)
    return text
