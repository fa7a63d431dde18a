"""OTLP/HTTP logs: export requests (protobuf or JSON) to raw records, and answers in the request's encoding.

Pure functions, no I/O. The export is scanned first (wire.py), so that its
records are counted and measured before any is decoded. Each OTLP log record becomes a dict that
records.normalize() reads like any record sent to POST /logs, so both
routes share validation, limits and the queue.
"""
import base64
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
    unread; their objects could cost a worker many times that.
    """
    media_type = records.media_type_of(content_type)
    if media_type == PROTOBUF:
        scan, parts = _protobuf_records, PROTOBUF_PARTS
    elif media_type == JSON:
        scan, parts = _json_records, JSON_PARTS
    else:
        raise records.UnsupportedMediaType("Content-Type %s is not supported; OTLP/HTTP sends %s or %s"
                                           % (media_type[:64], PROTOBUF, JSON))
    budget = [budget_of(limits)]
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
                        found.append(functools.partial(_record, data, span, parts[2], resource, scope))
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


def _protobuf_reader(message_class):
    """A reader of one protobuf message of message_class from its spans in the body."""
    def read(data, spans):
        # A message field sent twice is merged, as protobuf parsers do: its spans are read together.
        try:
            return message_class.FromString(b"".join(data[start:end] for start, end in spans))
        except DecodeError as error:
            raise records.InvalidBody("the body is not a protobuf ExportLogsServiceRequest: %s" % error) from None
    return read


def _json_reader(message_class, nullable=False):
    """A reader of one OTLP/JSON message of message_class from its spans in the body: proto3 JSON, but ids in hex.

    nullable: a field of a single message, where proto3 JSON reads null as
    the empty message (a record is an item of a list, where null is refused).
    """
    def read(data, spans):
        message = message_class()
        if not spans:
            return message
        # A name given twice in one object: the last counts, as for any JSON object here.
        start, end = spans[-1]
        try:
            value = orjson.loads(data[start:end])
        except orjson.JSONDecodeError as error:
            raise records.InvalidBody("the body is not valid JSON: %s" % error) from None
        if value is None and nullable:
            return message
        if not isinstance(value, dict):
            raise records.InvalidBody("an OTLP/JSON %s must be an object" % message_class.__name__)
        for name in ("traceId", "trace_id", "spanId", "span_id"):
            if isinstance(value.get(name), str):
                try:
                    value[name] = base64.b64encode(bytes.fromhex(value[name])).decode()
                except ValueError:
                    raise records.InvalidBody("%s %r is not hex" % (name, value[name][:64])) from None
        try:
            # OTLP/JSON receivers must ignore fields they do not know.
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError) as error:
            raise records.InvalidBody("the body is not an OTLP/JSON ExportLogsServiceRequest: %s"
                                      % str(error)[:500]) from None
        return message
    return read


# The readers of a resource, a scope and a log record, by encoding.
PROTOBUF_PARTS = tuple(map(_protobuf_reader, (Resource, InstrumentationScope, LogRecord)))
JSON_PARTS = (_json_reader(Resource, nullable=True), _json_reader(InstrumentationScope, nullable=True),
              _json_reader(LogRecord))


class _Part:
    """A resource or scope of an export: read when its first record is, then shared by its records."""

    def __init__(self, data, spans, read):
        self.data, self.spans, self.read = data, spans, read
        self.size = sum(end - start for start, end in spans)
        self.value = None

    def get(self, convert):
        """convert() of the decoded message, decoded once."""
        if self.value is None:
            self.value = convert(self.read(self.data, self.spans))
        return self.value


def _record(data, span, read, resource, scope):
    """The raw record of the log record at span, with its resource's and scope's metadata."""
    return record_of(read(data, [span]), resource.get(lambda message: attributes_of(message.attributes)),
                     scope.get(scope_of))


def record_of(log, resource, scope):
    """One LogRecord as a raw record: message, level, timestamp and metadata."""
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
    for key, value in attributes_of(log.attributes).items():
        # Renamed even where this record lacks the context key, so each key means one thing.
        while key in CONTEXT_KEYS or key in metadata:
            key = "_" + key
        metadata[key] = value

    body = value_of(log.body)
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


def scope_of(scope):
    """The instrumentation scope as {name, version, attributes}, without its empty fields."""
    fields = {"name": scope.name, "version": scope.version, "attributes": attributes_of(scope.attributes)}
    return {name: value for name, value in fields.items() if value}


def attributes_of(key_values):
    """OTLP KeyValue list → JSON object."""
    return {item.key: value_of(item.value) for item in key_values}


def value_of(any_value):
    """OTLP AnyValue → JSON value; bytes as base64 and non-finite doubles as text, as in proto3 JSON."""
    kind = any_value.WhichOneof("value")
    if kind == "string_value":
        return any_value.string_value
    if kind == "bool_value":
        return any_value.bool_value
    if kind == "int_value":
        return any_value.int_value
    if kind == "double_value":
        number = any_value.double_value
        if math.isfinite(number):
            return number
        # JSON has no such numbers; proto3 JSON spells them so.
        return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"
    if kind == "array_value":
        return [value_of(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode()
    # Unset, or a kind newer than this code (string_value_strindex needs a dictionary logs lack).
    return None


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
