"""Bodies that platforms and the standard library send as they are: Heroku's Logplex drains and Python's HTTPHandler.

Pure functions, no I/O, as in otlp.py: each body becomes raw records that
records.normalize() reads like those of a JSON body, so these formats share
its validation, limits and queue. parse_body() is records.parse_body() with
the two formats added:

- application/logplex-1: RFC 5424 syslog frames, octet counted (RFC 6587),
  as Logplex's HTTPS drains POST them; a record per frame.
- application/x-www-form-urlencoded that is not JSON: a logging.LogRecord's
  attributes, as logging.handlers.HTTPHandler POSTs them; one record.
"""
import ast
import datetime
import functools
import hashlib
import re
import urllib.parse

import records
import wire

LOGPLEX = "application/logplex-1"
FORM = "application/x-www-form-urlencoded"

# A frame's length has at most this many digits: a body is at most
# LOGFLOW_MAX_DECODED_BYTES, 10 MiB by default; a longer count is no length.
MAX_LENGTH_DIGITS = 10

# PRI, VERSION 1, TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID (RFC 5424 6.2), each "-" when absent.
SYSLOG_HEADER = re.compile(rb"<(\d{1,3})>1 (\S{1,255}) (\S{1,255}) (\S{1,255}) (\S{1,255}) (\S{1,255})(?: |\n?\Z)")
HEADER_FIELDS = ("hostname", "app_name", "proc_id", "msg_id")

# RFC 5424's SD-NAME: printable ASCII but = ] " and space, 1 to 32 of them.
SD_NAME = r'[!#-<>-\\^-~]{1,32}'
SD_PARAM = re.compile(r' (%s)="((?:[^"\\\]]|\\.)*)"' % SD_NAME)
# Only an element with parameters counts as structured data: Logplex sends
# none, and Rails' tagged lines ("[request-id] Started GET") would pass for
# elements without.
SD_ELEMENT = re.compile(r'\[(%s)((?:%s)+)\]' % (SD_NAME, SD_PARAM.pattern))
SD_ESCAPE = re.compile(r'\\(["\\\]])')

# A message wholly made of logfmt pairs (Heroku's router lines): key=value, key="quoted value".
LOGFMT_VALUE = r'"(?:[^"\\]|\\.)*"|[^\s"]*'
LOGFMT_PAIR = re.compile(r' *([^\s="]+)=(%s)(?= |\Z)' % LOGFMT_VALUE)
LOGFMT_LINE = re.compile(r'(?: *[^\s="]+=(?:%s)(?= |\Z))+ *\Z' % LOGFMT_VALUE)
LOGFMT_ESCAPE = re.compile(r'\\(["\\])')
# Whole numbers written as JSON writes them, within 64 bits: stored as numbers.
INTEGER = re.compile(r"(?:0|-?[1-9]\d{0,17})\Z")
DECIMAL = re.compile(r"-?\d{1,18}\.\d{1,18}\Z")

# A form-encoded record with more fields than this is refused: a LogRecord has
# about 22, and each `extra` adds one.
MAX_FORM_FIELDS = 1000
# LogRecord attributes that logging leaves None (HTTPHandler sends "None") or empty ("()").
EMPTY_FORM_VALUES = {"exc_info": "None", "exc_text": "None", "stack_info": "None", "taskName": "None",
                     "args": "()"}
NUMERIC_FORM_FIELDS = ("levelno", "lineno", "process", "thread", "msecs", "relativeCreated")
# Python's levels by number, for a levelname LogFlow does not know ("Level 25", "TRACE").
PYTHON_LEVELS = ((20, "DEBUG"), (30, "INFO"), (40, "WARN"), (50, "ERROR"))
# The most characters one conversion of msg % args writes beside its argument: "%f" % 1e308 writes 316.
MOST_PER_CONVERSION = 330
CONVERSION_SPEC = re.compile(r"[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


def parse_body(data, content_type, limits, headers=None):
    """records.parse_body(), and Logplex frames and HTTPHandler's form-encoded record.

    headers are the request's: Logplex-Frame-Id and Logplex-Drain-Token make
    the ids of a Logplex body's records. A form-encoded body that starts like
    JSON is JSON, as curl -d sends it.
    """
    media_type = records.media_type_of(content_type)
    if media_type == LOGPLEX:
        return logplex_records(data, limits, headers or {})
    if media_type == FORM:
        start = wire.skip_whitespace(data, 0)
        if data[start:start + 1] not in (b"", b"{", b"["):
            return form_records(data, limits)
    return records.parse_body(data, content_type, limits)


def logplex_records(data, limits, headers):
    """The records of a Logplex body, a frame each, as a records.Unread list: a frame is read when normalized.

    The body is cut into frames by their lengths first: InvalidBody if it is
    not octet-counted, TooManyRecords as soon as it holds more than
    limits.max_records frames. A frame larger than a record may be as sent is
    refused unread. A frame's id is the same whenever Logplex resends it (the
    same frame in the same place of a request with the same Logplex-Frame-Id),
    so the database stores it once, as it does a record with a client's id.
    """
    drain = (headers.get("Logplex-Drain-Token") or "", headers.get("Logplex-Frame-Id") or "")
    frames, position, end = records.Unread(), 0, len(data)
    while (position := wire.skip_whitespace(data, position)) < end:
        space = data.find(b" ", position, position + MAX_LENGTH_DIGITS + 1)
        digits = data[position:space] if space > position else b""
        if not digits.isdigit() or digits.startswith(b"0"):
            raise records.InvalidBody("the body is not octet-counted syslog (RFC 6587, as Logplex sends it): no"
                                      " frame length at byte %d" % position)
        start, length = space + 1, int(digits)
        if length > end - start:
            raise records.InvalidBody("the frame at byte %d says it is %d bytes long; the body has %d more"
                                      % (position, length, end - start))
        if len(frames) == limits.max_records:
            raise records.TooManyRecords(limits, beside=" (Logplex frames)")
        if length > records.SENT_FACTOR * limits.max_record_bytes:
            frames.append(records.too_large_as_sent(limits))
        else:
            frames.append(functools.partial(_frame_record, data, start, start + length, len(frames), drain))
        position = start + length
    if not frames:
        raise records.InvalidBody("the request body is empty")
    return frames


def msg_count_warning(content_type, headers, frames):
    """What to tell a Logplex client whose Logplex-Msg-Count is not the frames found; None if it is, or is not sent."""
    if records.media_type_of(content_type) != LOGPLEX or "Logplex-Msg-Count" not in headers:
        return None
    said = headers["Logplex-Msg-Count"].strip()
    if said == str(frames):
        return None
    return "Logplex-Msg-Count is %s, but the body holds %d frames; each frame was read as a record" % (
        said[:20] or "empty", frames)


def _frame_record(data, start, end, index, drain):
    """The raw record of one syslog frame, data[start:end]; InvalidRecord if it is not RFC 5424."""
    header = SYSLOG_HEADER.match(data, start, end)
    if header is None:
        raise records.InvalidRecord("the frame is not RFC 5424 syslog: it starts %r" % data[start:min(end, start + 40)])
    priority = int(header.group(1))
    if priority > 191:
        raise records.InvalidRecord("the frame's priority is %d; syslog's go up to 191" % priority)
    stamp = header.group(2).decode("ascii", "replace")
    metadata = {name: value.decode("utf-8", "replace") for name, value in zip(HEADER_FIELDS, header.group(3, 4, 5, 6))
                if value != b"-"}
    token, frame_id = drain
    if token:
        metadata["drain_token"] = token
    rest = data[header.end():end].removesuffix(b"\n").decode("utf-8", "replace")
    structured, rest = _structured_data(rest)
    if structured:
        metadata["structured_data"] = structured
    message = rest.removeprefix("\ufeff")
    for key, value in _logfmt_pairs(message):
        while key in metadata:
            key = "_" + key
        metadata[key] = value
    record = {"message": message, "level": priority % 8, "metadata": metadata}
    if stamp != "-":
        record["timestamp"] = stamp
    if frame_id:
        record["id"] = _frame_id(data[start:end], index, drain, stamp)
    return record


def _frame_id(frame, index, drain, stamp):
    """The id of a frame: from its drain, request, place and bytes; led by its time, as LogFlow's own ids are."""
    token, frame_id = drain
    digest = hashlib.blake2b(b"\0".join((token.encode(), frame_id.encode(), b"%d" % index, frame)),
                             digest_size=16).hexdigest()
    try:
        moment = records.parse_timestamp(stamp)
    except records.InvalidRecord:
        # normalize() refuses the frame for it, or it has no time ("-"): any fixed lead will do.
        moment = records.EPOCH
    return records.time_ordered_uuid((moment - records.EPOCH) // datetime.timedelta(milliseconds=1), digest, "8")


def _structured_data(rest):
    """({SD-ID: {name: value}}, the message) of what follows a frame's MSGID.

    Logplex leaves STRUCTURED-DATA out altogether (not even "-"): what follows
    is structured data only if it reads as whole elements with parameters.
    """
    if rest == "-" or rest.startswith("- "):
        return {}, rest[2:]
    elements, position = {}, 0
    while (element := SD_ELEMENT.match(rest, position)) is not None:
        params = {}
        for name, value in SD_PARAM.findall(element.group(2)):
            params.setdefault(name, []).append(SD_ESCAPE.sub(r"\1", value))
        # A name may repeat within an element (RFC 5424 6.3.3): its values are then a list.
        elements[element.group(1)] = {name: values[0] if len(values) == 1 else values
                                      for name, values in params.items()}
        position = element.end()
    if not elements or not (position == len(rest) or rest[position] == " "):
        return {}, rest
    return elements, rest[position + 1:]


def _logfmt_pairs(message):
    """The (key, value) pairs of a message that is wholly logfmt, whole numbers as numbers; none for any other."""
    # Checked whole first, then split: two scans in C rather than a match per pair from Python.
    if "=" not in message or not LOGFMT_LINE.match(message):
        return []
    return [(key, LOGFMT_ESCAPE.sub(r"\1", value[1:-1]) if value.startswith('"') else _number(value, decimals=False))
            for key, value in LOGFMT_PAIR.findall(message)]


def _number(text, decimals=True):
    """text as an int (or a float, with decimals) when it is written as one, else text."""
    if INTEGER.match(text):
        return int(text)
    if decimals and DECIMAL.match(text):
        return float(text)
    return text


def form_records(data, limits):
    """The one record of a form-encoded LogRecord, as a records.Unread list; it is read when normalized."""
    if len(data) > records.SENT_FACTOR * limits.max_record_bytes:
        return records.Unread([records.too_large_as_sent(limits)])
    if data.count(b"&") >= MAX_FORM_FIELDS:
        return records.Unread([records.InvalidRecord("a form-encoded record has at most %d fields" % MAX_FORM_FIELDS)])
    return records.Unread([functools.partial(_form_record, data, limits)])


def _form_record(data, limits):
    """The raw record of a LogRecord's attributes as HTTPHandler sends them (its mapLogRecord: record.__dict__)."""
    fields = dict(urllib.parse.parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True,
                                         errors="replace"))
    for name, empty in EMPTY_FORM_VALUES.items():
        if fields.get(name) == empty:
            del fields[name]
    for name in NUMERIC_FORM_FIELDS:
        if name in fields:
            fields[name] = _number(fields[name])
    message = fields.pop("message", None)
    if message is None and "msg" in fields:
        message = _formatted(fields["msg"], fields.get("args"), limits)
    if message is not None and fields.get("msg") == message:
        # Nothing was formatted: the message says it all.
        del fields["msg"]
    record = {"message": message, "metadata": fields}
    level = _python_level(fields.pop("levelname", None), fields.get("levelno"))
    if level is not None:
        record["level"] = level
    if "created" in fields:
        record["timestamp"] = fields.pop("created")
    return record


def _python_level(name, number):
    """A level LogFlow knows from a LogRecord's levelname, else from its levelno on Python's scale; None for INFO."""
    if name is not None and name.strip().lower() in records.LEVEL_NAMES:
        return name
    if not isinstance(number, int):
        return None
    for limit, level in PYTHON_LEVELS:
        if number < limit:
            return level
    return "CRITICAL"


def _formatted(msg, args, limits):
    """msg % args as logging's getMessage() makes it, args read as a Python literal (never evaluated); else msg.

    args is the repr() of a tuple or dict. It is read only when at most
    LOGFLOW_MAX_MESSAGE_BYTES long, and formatted only when the result cannot
    pass LOGFLOW_MAX_RECORD_BYTES: "%(a)s" repeated a thousand times, or a
    width of a billion, would build far more than the body's size.
    """
    if args is None or len(args) > limits.max_message_bytes or len(msg) > limits.max_record_bytes:
        return msg
    try:
        values = ast.literal_eval(args)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return msg
    if not isinstance(values, (tuple, dict)):
        return msg
    most = _formatted_length_bound(msg, len(args), isinstance(values, dict))
    if most is None or most > limits.max_record_bytes:
        return msg
    try:
        return msg % values
    except (TypeError, ValueError, KeyError, OverflowError):
        return msg


def _formatted_length_bound(msg, args_length, mapping):
    """An upper bound on len(msg % args) for args written in args_length characters; None if a width comes from args.

    Each conversion writes its width and precision, a float's digits, and at
    most about twice its argument's literal (four times, to be safe); a
    mapping's argument may be written by every conversion, a tuple's once.
    """
    total, conversions, position = len(msg), 0, msg.find("%")
    while position >= 0:
        position += 1
        if msg.startswith("(", position):
            # A mapping key, which may hold balanced parentheses.
            depth = 0
            for position in range(position, len(msg)):
                depth += {"(": 1, ")": -1}.get(msg[position], 0)
                if depth == 0:
                    break
            position += 1
        spec = CONVERSION_SPEC.match(msg, position)
        numbers = [number for number in spec.groups() if number]
        if "*" in numbers or any(len(number) > 9 for number in numbers):
            return None
        total += sum(map(int, numbers)) + MOST_PER_CONVERSION
        conversions += 1
        position = msg.find("%", spec.end() + 1)
    return total + 4 * args_length * (conversions if mapping else 1)
