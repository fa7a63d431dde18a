"""OTLP/HTTP logs: export requests (protobuf or JSON) to raw records, and answers in the request's encoding.

Pure functions, no I/O. The export is scanned first (wire.py), so that its
records are counted and measured before any is decoded. Each OTLP log record becomes a dict that
records.normalize() reads like any record sent to POST /logs, so both
routes share validation, limits and the queue.
"""
import base64
import binascii
import datetime
import functools
import math
import uuid

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import records
import wire

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# severity_number ranges of the OTLP data model (TRACE 1-4 … FATAL 21-24) → LogFlow's levels.
SEVERITY_LEVELS = ("DEBUG", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")

# Metadata keys of the OTLP context; a log attribute of the same name gets leading underscores.
CONTEXT_KEYS = ("resource", "scope", "trace_id", "span_id", "severity_text", "severity_number",
                "event_name")

# Ids of timed records are UUIDv5 in this namespace, from the record's content.
RECORD_IDS = uuid.UUID("8c0b5d6e-2f4a-5b1c-9d3e-7a6f0e4b2c18")

# A partial success names at most this many refused records; the count covers them all.
MAX_REPORTED = 10

# google.rpc.Code of each status LogFlow answers: informative only, OTLP clients go by the HTTP status.
RPC_CODES = {400: 3, 401: 16, 403: 7, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}


def response_type(content_type):
    """The media type of the answer: protobuf for a protobuf request, else JSON."""
    return PROTOBUF if records.media_type_of(content_type) == PROTOBUF else JSON


def decode(data, content_type, limits):
    """(raw records, where each one was in the request) from an ExportLogsServiceRequest body.

    The records come as a records.Unread list: found by a scan of the body's
    structure (records.TooManyRecords past limits.max_records, while scanning),
    each decoded only when normalized. A record over four times
    limits.max_record_bytes as sent, with its resource and scope, is refused
    unread; their objects could cost a worker many times that. So is every
    record once the export's attributes and values pass limits.max_otlp_values (see Values).
    """
    media_type = records.media_type_of(content_type)
    if media_type == PROTOBUF:
        scan, parts = _protobuf_records, PROTOBUF_PARTS
    elif media_type == JSON:
        scan, parts = _json_records, JSON_PARTS
    else:
        raise records.UnsupportedMediaType("Content-Type %s is not supported; OTLP/HTTP sends %s or %s"
                                           % (media_type[:64], PROTOBUF, JSON))
    budget, values = [budget_of(limits)], Values(limits.max_otlp_values)
    found, count, most = records.Unread(), 0, records.SENT_FACTOR * limits.max_record_bytes
    locations = []
    try:
        for i, resource, scopes in scan(data, budget):
            resource = _Part(data, resource, parts[0])
            for j, scope, spans in scopes:
                scope = _Part(data, scope, parts[1])
                for k, span in enumerate(spans):
                    count += 1
                    if count > limits.max_records:
                        raise records.TooManyRecords(limits)
                    locations.append("resourceLogs[%d].scopeLogs[%d].logRecords[%d]" % (i, j, k))
                    if span[1] - span[0] + resource.size + scope.size > most:
                        found.append(records.too_large_as_sent(limits, ", with its resource and scope"))
                    else:
                        found.append(functools.partial(_record, data, span, parts[2], resource, scope, values))
    except wire.Unreadable as error:
        raise records.InvalidBody("the body is not an OTLP %s ExportLogsServiceRequest: %s"
                                  % ("protobuf" if scan is _protobuf_records else "JSON", error)) from None
    except wire.TooMany:
        raise records.TooManyRecords(limits, beside=", and %d protobuf fields or JSON members and elements in all"
                                     % budget_of(limits)) from None
    return found, locations


def budget_of(limits):
    """The fields (or JSON members and elements) an export may hold around and including its records.

    For each record a resource, a scope and their lists' entries and schema
    URLs, with room for fields this code does not know: honest exports hold
    far fewer, while millions of empty entries are refused as they are counted.
    """
    return 8 * limits.max_records + 64


def _protobuf_records(data, budget):
    """Yield (i, resource spans, scopes) of each ResourceLogs; scopes yield (j, scope spans, record spans)."""
    resource_logs = [span for number, span in wire.protobuf_fields(data, 0, len(data), budget) if number == 1]
    for i, (start, end) in enumerate(resource_logs):
        fields = list(wire.protobuf_fields(data, start, end, budget))
        # A message field sent twice is merged, as protobuf parsers do: its spans are read together.
        yield i, [span for number, span in fields if number == 1], _protobuf_scopes(
            data, [span for number, span in fields if number == 2], budget)


def _protobuf_scopes(data, scope_logs, budget):
    for j, (start, end) in enumerate(scope_logs):
        fields = list(wire.protobuf_fields(data, start, end, budget))
        yield j, [span for number, span in fields if number == 1], [
            span for number, span in fields if number == 2]


# OTLP/JSON's shape around its records, as wire.walk() reads it; proto3 JSON
# takes both spellings of each field name.
_SCOPE_LOGS = {b"scope": ("scope", "span"), b"logRecords": ("records", ["span"]),
               b"log_records": ("records", ["span"])}
_RESOURCE_LOGS = {b"resource": ("resource", "span"), b"scopeLogs": ("scopes", [_SCOPE_LOGS]),
                  b"scope_logs": ("scopes", [_SCOPE_LOGS])}
_EXPORT = {b"resourceLogs": ("resources", [_RESOURCE_LOGS]), b"resource_logs": ("resources", [_RESOURCE_LOGS])}


def _json_records(data, budget):
    """_protobuf_records() of an OTLP/JSON body."""
    start = wire.skip_whitespace(data, 0)
    if data[start:start + 1] != b"{":
        raise wire.Unreadable("the body must be a JSON object")
    export, end = wire.walk(data, start, _EXPORT, budget)
    if wire.skip_whitespace(data, end) != len(data):
        raise wire.Unreadable("trailing characters at byte %d" % end)
    for i, resource_logs in enumerate(_joined(export["resources"])):
        yield i, resource_logs["resource"], (
            (j, scope_logs["scope"], list(_joined(scope_logs["records"])))
            for j, scope_logs in enumerate(_joined(resource_logs["scopes"])))


def _joined(arrays):
    """The items of arrays one after the other (a field given under both its names has two)."""
    return (item for array in arrays for item in array)


class Values:
    """An export's budget of attributes and values to convert: LOGFLOW_MAX_OTLP_VALUES, spent over its records.

    Each KeyValue, and each item of an array or key-value list, nested ones
    included, costs a worker about a microsecond of Python to convert, and a
    10 KB gzip holds millions of empty ones (2 bytes each in protobuf). A list
    is paid for before it is read, so one too long costs nothing; a record
    whose attributes, body, resource or scope would take more than is left is
    rejected by index (the work already done stays spent).
    """

    __slots__ = ("left", "most")

    def __init__(self, most):
        self.left = self.most = most

    def take(self, count):
        """Spend count, or refuse the record being converted if fewer are left."""
        if count > self.left:
            raise records.InvalidRecord(
                "the export holds more than %d attributes and values in all (LOGFLOW_MAX_OTLP_VALUES)" % self.most)
        self.left -= count


def _protobuf_message(message_class, data, spans):
    """One protobuf message of message_class from its spans in the body (decoded in C: cheap)."""
    # A message field sent twice is merged, as protobuf parsers do: its spans are read together.
    try:
        return message_class.FromString(b"".join(data[start:end] for start, end in spans))
    except DecodeError as error:
        raise records.InvalidBody("the body is not a protobuf ExportLogsServiceRequest: %s" % error) from None


def _protobuf_resource(data, spans, values):
    return attributes_of(_protobuf_message(Resource, data, spans).attributes, values)


def _protobuf_scope(data, spans, values):
    return scope_of(_protobuf_message(InstrumentationScope, data, spans), values)


def _protobuf_log(data, spans, values):
    """(the LogRecord, its attributes, its body) of a record's span."""
    log = _protobuf_message(LogRecord, data, spans)
    return log, attributes_of(log.attributes, values), value_of(log.body, values)


# Fields of proto3 JSON messages read by json_format (both spellings): all but
# the lists, which this module converts itself (json_format takes 7 µs an item).
_LOG_FIELDS = ("timeUnixNano", "time_unix_nano", "observedTimeUnixNano", "observed_time_unix_nano",
               "severityNumber", "severity_number", "severityText", "severity_text", "flags",
               "traceId", "trace_id", "spanId", "span_id", "eventName", "event_name")
_SCOPE_FIELDS = ("name", "version")


def _json_object(data, spans, what, nullable=True):
    """The JSON object of a message at its spans in the body ({} if absent, or null where nullable).

    nullable: a field of a single message, where proto3 JSON reads null as
    the empty message (a record is an item of a list, where null is refused).
    """
    if not spans:
        return {}
    # A name given twice in one object: the last counts, as for any JSON object here.
    start, end = spans[-1]
    try:
        value = orjson.loads(data[start:end])
    except orjson.JSONDecodeError as error:
        raise records.InvalidBody("the body is not valid JSON: %s" % error) from None
    if value is None and nullable:
        return {}
    if not isinstance(value, dict):
        raise records.InvalidBody("an OTLP/JSON %s must be an object" % what)
    return value


def _json_fields(value, names, message):
    """message with the named fields of value read as proto3 JSON (ids in hex, as OTLP/JSON sends them)."""
    fields = {name: value[name] for name in names if name in value}
    for name in ("traceId", "trace_id", "spanId", "span_id"):
        if isinstance(fields.get(name), str):
            try:
                fields[name] = base64.b64encode(bytes.fromhex(fields[name])).decode()
            except ValueError:
                raise records.InvalidBody("%s %r is not hex" % (name, fields[name][:64])) from None
    try:
        json_format.ParseDict(fields, message)
    except (json_format.ParseError, ValueError, TypeError) as error:
        raise _not_json_export(error) from None
    return message


def _not_json_export(error):
    return records.InvalidBody("the body is not an OTLP/JSON ExportLogsServiceRequest: %s" % str(error)[:500])


def _json_resource(data, spans, values):
    return json_attributes_of(_json_object(data, spans, "Resource").get("attributes"), values)


def _json_scope(data, spans, values):
    value = _json_object(data, spans, "InstrumentationScope")
    return scope_of(_json_fields(value, _SCOPE_FIELDS, InstrumentationScope()), values,
                    json_attributes_of(value.get("attributes"), values))


def _json_log(data, spans, values):
    """_protobuf_log() of an OTLP/JSON record."""
    value = _json_object(data, spans, "LogRecord", nullable=False)
    return (_json_fields(value, _LOG_FIELDS, LogRecord()), json_attributes_of(value.get("attributes"), values),
            json_value_of(value.get("body"), values))


# The readers of a resource, a scope and a log record, by encoding:
# read(data, spans, values) → resource attributes, scope, or (LogRecord, attributes, body).
PROTOBUF_PARTS = (_protobuf_resource, _protobuf_scope, _protobuf_log)
JSON_PARTS = (_json_resource, _json_scope, _json_log)


class _Part:
    """A resource or scope of an export: read when its first record is, then shared by its records."""

    def __init__(self, data, spans, read):
        self.data, self.spans, self.read = data, spans, read
        self.size = sum(end - start for start, end in spans)
        self.value = None

    def get(self, values):
        """The converted resource attributes or scope, converted once."""
        if self.value is None:
            self.value = self.read(self.data, self.spans, values)
        return self.value


def _record(data, span, read, resource, scope, values):
    """The raw record of the log record at span, with its resource's and scope's metadata."""
    log, attributes, body = read(data, [span], values)
    return record_of(log, attributes, body, resource.get(values), scope.get(values))


def record_of(log, attributes, body, resource, scope):
    """One LogRecord (its attributes and body converted) as a raw record: message, level, timestamp and metadata."""
    metadata = {}
    if resource:
        metadata["resource"] = resource
    if scope:
        metadata["scope"] = scope
    if log.trace_id:
        metadata["trace_id"] = log.trace_id.hex()
    if log.span_id:
        metadata["span_id"] = log.span_id.hex()
    if log.severity_text:
        metadata["severity_text"] = log.severity_text
    if log.severity_number:
        metadata["severity_number"] = log.severity_number
    if log.event_name:
        metadata["event_name"] = log.event_name
    for key, value in attributes.items():
        # Renamed even where this record lacks the context key, so each key means one thing.
        while key in CONTEXT_KEYS or key in metadata:
            key = "_" + key
        metadata[key] = value

    if body is None:
        # OTLP allows records without a body (events); they are kept with an empty message.
        body = ""
    elif not isinstance(body, str):
        body = orjson.dumps(body).decode()
    record = {"message": body, "metadata": metadata}
    # Absent, not None: normalize() keeps a null field in metadata.
    level = level_of(log.severity_number, log.severity_text)
    if level:
        record["level"] = level
    nanoseconds = log.time_unix_nano or log.observed_time_unix_nano
    if nanoseconds:
        # RFC 3339 text is exact whatever the magnitude; epoch numbers are judged by it.
        record["timestamp"] = records.format_time(
            records.EPOCH + datetime.timedelta(microseconds=nanoseconds // 1000))
        # An exporter resends a whole batch when an answer is lost: an id from
        # the content stores the resent records once. Both clocks and the flags
        # go in, so repeated lines with coarse times stay apart when their
        # observed times differ; only records identical in all of it merge.
        # The record's time leads the id, as in LogFlow's own ids (records.random_uuid).
        digest = uuid.uuid5(RECORD_IDS, orjson.dumps(
            [log.time_unix_nano, log.observed_time_unix_nano, log.flags, record],
            option=orjson.OPT_SORT_KEYS).decode()).hex
        record["id"] = records.time_ordered_uuid(nanoseconds // 1_000_000, digest, "8")
    return record


def level_of(severity_number, severity_text):
    """LogFlow's level: from the severity number's range, else a level name in the text, else None (INFO)."""
    if 1 <= severity_number <= 24:
        return SEVERITY_LEVELS[(severity_number - 1) // 4]
    try:
        return records.parse_level(severity_text or None)
    except records.InvalidRecord:
        return None


def scope_of(scope, values, attributes=None):
    """The instrumentation scope as {name, version, attributes}, without its empty fields.

    attributes: already converted (OTLP/JSON's), else the message's own.
    """
    if attributes is None:
        attributes = attributes_of(scope.attributes, values)
    fields = {"name": scope.name, "version": scope.version, "attributes": attributes}
    return {name: value for name, value in fields.items() if value}


def attributes_of(key_values, values):
    """OTLP KeyValue list → JSON object, paid for in values first."""
    values.take(len(key_values))
    return {item.key: value_of(item.value, values) for item in key_values}


def value_of(any_value, values):
    """OTLP AnyValue → JSON value; bytes as base64 and non-finite doubles as text, as in proto3 JSON."""
    kind = any_value.WhichOneof("value")
    if kind == "string_value":
        return any_value.string_value
    if kind == "bool_value":
        return any_value.bool_value
    if kind == "int_value":
        return any_value.int_value
    if kind == "double_value":
        return _double(any_value.double_value)
    if kind == "array_value":
        items = any_value.array_value.values
        values.take(len(items))
        return [value_of(item, values) for item in items]
    if kind == "kvlist_value":
        return attributes_of(any_value.kvlist_value.values, values)
    if kind == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode()
    # Unset, or a kind newer than this code (string_value_strindex needs a dictionary logs lack).
    return None


def _double(number):
    if math.isfinite(number):
        return number
    # JSON has no such numbers; proto3 JSON spells them so.
    return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"


# proto3 JSON's names of AnyValue's kinds (both spellings) → the kind.
_KINDS = {"stringValue": "string", "string_value": "string", "boolValue": "bool", "bool_value": "bool",
          "intValue": "int", "int_value": "int", "doubleValue": "double", "double_value": "double",
          "arrayValue": "array", "array_value": "array", "kvlistValue": "kvlist", "kvlist_value": "kvlist",
          "bytesValue": "bytes", "bytes_value": "bytes"}
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
INT64 = range(-2 ** 63, 2 ** 63)


def json_attributes_of(items, values):
    """attributes_of() of OTLP/JSON's KeyValue list, read as json_format would (null is the empty list)."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _not_json_export("attributes and key-value lists must be lists")
    values.take(len(items))
    result = {}
    for item in items:
        if not isinstance(item, dict):
            raise _not_json_export("a KeyValue must be an object")
        key = item.get("key")
        if not isinstance(key, str):
            if key is not None:
                raise _not_json_export("a KeyValue's key must be a string")
            key = ""
        result[key] = json_value_of(item.get("value"), values)
    return result


def json_value_of(value, values):
    """value_of() of an OTLP/JSON AnyValue, read as json_format would: an invalid one refuses the body."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _not_json_export("an AnyValue must be an object")
    # Other members are ignored, as OTLP/JSON receivers must; null is unset.
    kinds = [(kind, value[name]) for name, kind in _KINDS.items() if value.get(name) is not None]
    if not kinds:
        return None
    if len(kinds) > 1:
        raise _not_json_export("an AnyValue holds one value, not %d" % len(kinds))
    [(kind, given)] = kinds
    if kind in _JSON_LISTS:
        return _JSON_LISTS[kind](given, values)
    try:
        return _JSON_SCALARS[kind](given)
    except (TypeError, ValueError, OverflowError, binascii.Error):
        raise _not_json_export("%.100r is not a valid %sValue" % (given, kind)) from None


def _json_string(given):
    if not isinstance(given, str):
        raise TypeError
    return given


def _json_bool(given):
    if not isinstance(given, bool):
        raise TypeError
    return given


def _json_int(given):
    # json_format's rules: a whole float, or digits in a string without spaces; 64 bits.
    if isinstance(given, bool) or (isinstance(given, float) and not given.is_integer()) \
            or (isinstance(given, str) and " " in given) or not isinstance(given, (int, float, str)):
        raise TypeError
    try:
        number = int(given)
    except ValueError:
        number = float(given)  # "2.0", as json_format reads it
        if not number.is_integer():
            raise
        number = int(number)
    if number not in INT64:
        raise ValueError
    return number


def _json_double(given):
    if isinstance(given, str) and given in _NON_FINITE:
        return _double(_NON_FINITE[given])
    if isinstance(given, bool) or not isinstance(given, (int, float, str)) or given == "nan":
        raise TypeError
    return _double(float(given))


def _json_bytes(given):
    if not isinstance(given, str):
        raise TypeError
    encoded = given.encode()
    # json_format's reading: URL-safe or standard alphabet, padding optional.
    return base64.b64encode(base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))).decode()


def _json_list(given):
    """The values of an ArrayValue or KeyValueList ({"values": [...]}; null or absent: none)."""
    if not isinstance(given, dict):
        raise _not_json_export("an arrayValue or kvlistValue must be an object")
    return given.get("values")


def _json_array(given, values):
    items = _json_list(given)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _not_json_export("an arrayValue's values must be a list")
    values.take(len(items))
    if None in items:
        raise _not_json_export("an arrayValue's values may not be null")
    return [json_value_of(item, values) for item in items]


def _json_kvlist(given, values):
    return json_attributes_of(_json_list(given), values)


_JSON_SCALARS = {"string": _json_string, "bool": _json_bool, "int": _json_int, "double": _json_double,
                 "bytes": _json_bytes}
_JSON_LISTS = {"array": _json_array, "kvlist": _json_kvlist}


def encode_success(media_type, summary, locations):
    """The 200 answer: an ExportLogsServiceResponse, with partial_success when records were refused or changed."""
    response = ExportLogsServiceResponse()
    if summary is not None and (summary["rejected"] or summary.get("warnings")):
        response.partial_success.rejected_log_records = summary["rejected"]
        response.partial_success.error_message = describe(summary, locations)
    return _encode(response, media_type)


def encode_failure(media_type, status, message, summary=None, locations=()):
    """A 4xx/5xx answer: a google.rpc.Status, with a BadRequest naming each refused record."""
    failure = status_pb2.Status(code=RPC_CODES.get(status, 2), message=message)
    if summary and summary.get("errors"):
        failure.message = "%s: %s" % (message, describe(summary, locations))
        failure.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=_location(locations, error["index"]),
                                                        description=error["error"])
            for error in summary["errors"]]))
    return _encode(failure, media_type)


def describe(summary, locations):
    """One English sentence on the refused records (the first few) and the warnings."""
    parts = []
    for kind, items in (("error", summary["errors"]), ("warning", summary.get("warnings", []))):
        parts.extend("%s: %s" % (_location(locations, item["index"]), item[kind])
                     for item in items[:MAX_REPORTED])
        if len(items) > MAX_REPORTED:
            parts.append("and %d more %ss" % (len(items) - MAX_REPORTED, kind))
    prefix = "%d log records rejected" % summary["rejected"] if summary["rejected"] else "accepted with warnings"
    return "%s; %s" % (prefix, "; ".join(parts))


def _location(locations, index):
    return locations[index] if index < len(locations) else "logRecords[%d]" % index


def _encode(message, media_type):
    if media_type == PROTOBUF:
        return message.SerializeToString()
    return orjson.dumps(json_format.MessageToDict(message))
