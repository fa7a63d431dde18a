"""POST /v1/logs on both backends: OTLP/HTTP in protobuf and JSON, checked against what was stored."""
import base64
import datetime
import gzip
import logging
import uuid

import orjson

import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (ExportLogsServiceRequest,
                                                                    ExportLogsServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

import models
import otlp
from helpers import drain_all, serve, stored_logs, wait_for
from logflow import create_app

PROTOBUF = "application/x-protobuf"
TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"
# 2026-11-27T10:00:00.123456Z, with nanoseconds LogFlow drops.
NANOS = 1795773600_123456_789
AT = datetime.datetime(2026, 11, 27, 10, 0, 0, 123456)


def export(*log_records, resource=None, scope=None):
    """An OTLP/JSON ExportLogsServiceRequest holding the records in one resource and scope."""
    return {"resourceLogs": [{
        "resource": {"attributes": resource or []},
        "scopeLogs": [{"scope": scope or {}, "logRecords": list(log_records)}],
    }]}


def as_protobuf(request):
    """The protobuf encoding of an OTLP/JSON request (its hex ids as bytes)."""
    message = ExportLogsServiceRequest()
    for resource_logs in request["resourceLogs"]:
        added = message.resource_logs.add()
        added.resource.attributes.extend(key_values(resource_logs["resource"]["attributes"]))
        for scope_logs in resource_logs["scopeLogs"]:
            scope = added.scope_logs.add()
            scope.scope.name = scope_logs["scope"].get("name", "")
            scope.scope.version = scope_logs["scope"].get("version", "")
            for log in scope_logs["logRecords"]:
                record = scope.log_records.add()
                record.time_unix_nano = int(log.get("timeUnixNano", 0))
                record.observed_time_unix_nano = int(log.get("observedTimeUnixNano", 0))
                record.severity_number = log.get("severityNumber", 0)
                record.severity_text = log.get("severityText", "")
                record.trace_id = bytes.fromhex(log.get("traceId", ""))
                record.span_id = bytes.fromhex(log.get("spanId", ""))
                if "body" in log:
                    record.body.CopyFrom(any_value(log["body"]))
                record.attributes.extend(key_values(log.get("attributes", [])))
    return message.SerializeToString()


def any_value(value):
    return json_format.ParseDict(value, AnyValue())


def key_values(items):
    return [json_format.ParseDict(item, KeyValue()) for item in items]


def post_otlp(client, key, body, content_type="application/json", headers=None):
    """POST an OTLP body (bytes, or a JSON request) to /v1/logs with the key."""
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    all_headers = {"X-API-Key": key} if key else {}
    all_headers.update(headers or {})
    return client.post("/v1/logs", data=body, headers=all_headers, content_type=content_type)


def text(value):
    return {"stringValue": value}


def attribute(key, value):
    return {"key": key, "value": value}


FULL_RECORD = {
    "timeUnixNano": str(NANOS), "observedTimeUnixNano": str(NANOS + 10**9),
    "severityNumber": 13, "severityText": "WARNING", "body": text("disk almost full"),
    "traceId": TRACE_ID.upper(), "spanId": SPAN_ID,
    "attributes": [attribute("disk", text("/dev/sda1")), attribute("free.bytes", {"intValue": "1024"})],
}
FULL_METADATA = {
    "resource": {"service.name": "billing"},
    "scope": {"name": "billing.disk", "version": "1.2"},
    "trace_id": TRACE_ID, "span_id": SPAN_ID,
    "severity_text": "WARNING", "severity_number": 13,
    "disk": "/dev/sda1", "free.bytes": 1024,
}


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_a_record_maps_to_message_level_timestamp_and_metadata(client, key, project, encoding):
    request = export(FULL_RECORD, resource=[attribute("service.name", text("billing"))],
                     scope={"name": "billing.disk", "version": "1.2"})
    if encoding == "protobuf":
        response = post_otlp(client, key, as_protobuf(request), PROTOBUF)
        assert response.mimetype == PROTOBUF
        answer = ExportLogsServiceResponse.FromString(response.data)
        assert not answer.HasField("partial_success")
    else:
        response = post_otlp(client, key, request)
        assert response.mimetype == "application/json" and response.json == {}
    assert response.status_code == 200
    drain_all()
    [row] = stored_logs(project.id)
    assert (row["message"], row["level"], row["timestamp"]) == ("disk almost full", "WARN", AT)
    assert row["metadata"] == FULL_METADATA


def test_a_resent_export_is_stored_once_whichever_its_encoding(client, key, project):
    other = dict(FULL_RECORD, timeUnixNano=str(NANOS + 1))  # one nanosecond apart: another record
    # The same line at the same coarse time, observed apart: a repeated line, not a resend.
    repeated = dict(FULL_RECORD, observedTimeUnixNano=str(NANOS + 2 * 10**9))
    untimed = {"body": text("no time")}                   # no time to tell a resend by: a new id each time
    request = export(FULL_RECORD, other, repeated, untimed)
    assert post_otlp(client, key, as_protobuf(request), PROTOBUF).status_code == 200
    assert post_otlp(client, key, request).status_code == 200
    drain_all()
    rows = stored_logs(project.id)
    assert sorted(row["message"] for row in rows) == ["disk almost full"] * 3 + ["no time"] * 2
    assert len({row["id"] for row in rows}) == 5
    # Content ids lead with the record's time in milliseconds (version 8), as new ids do (version 7).
    timed = [uuid.UUID(row["id"]) for row in rows if row["message"] == "disk almost full"]
    assert {(value.version, value.int >> 80) for value in timed} == {(8, NANOS // 1_000_000)}
    assert {uuid.UUID(row["id"]).version for row in rows if row["message"] == "no time"} == {7}


def test_every_any_value_kind_becomes_json(client, key, project):
    values = {
        "string": text("s"), "bool": {"boolValue": True}, "int": {"intValue": "-9223372036854775808"},
        "double": {"doubleValue": 2.5}, "nan": {"doubleValue": "NaN"}, "inf": {"doubleValue": "-Infinity"},
        "bytes": {"bytesValue": base64.b64encode(b"\x00\xff").decode()}, "empty": {},
        "array": {"arrayValue": {"values": [text("a"), {"intValue": 1}, {"arrayValue": {}}]}},
        "kvlist": {"kvlistValue": {"values": [attribute("inner", {"kvlistValue": {
            "values": [attribute("deep", {"boolValue": False})]}})]}},
    }
    body = {"kvlistValue": {"values": [attribute("event", text("login")), attribute("n", {"intValue": 3})]}}
    request = export({"body": body, "attributes": [attribute(k, v) for k, v in values.items()]},
                     {"body": {"arrayValue": {"values": [text("x"), {"doubleValue": 1.5}]}}},
                     {"body": {"intValue": "7"}})
    assert post_otlp(client, key, request).status_code == 200
    drain_all()
    rows = stored_logs(project.id)
    assert sorted(row["message"] for row in rows) == sorted(['{"event":"login","n":3}', '["x",1.5]', "7"])
    [row] = [row for row in rows if row["message"].startswith("{")]
    assert row["metadata"] == {
        "string": "s", "bool": True, "int": -2**63, "double": 2.5, "nan": "NaN", "inf": "-Infinity",
        "bytes": "AP8=", "empty": None, "array": ["a", 1, []], "kvlist": {"inner": {"deep": False}},
    }


SEVERITIES = [(1, "", "DEBUG"), (4, "", "DEBUG"), (5, "", "DEBUG"), (8, "", "DEBUG"), (9, "", "INFO"),
              (12, "", "INFO"), (13, "", "WARN"), (16, "", "WARN"), (17, "", "ERROR"), (20, "", "ERROR"),
              (21, "", "CRITICAL"), (24, "", "CRITICAL"), (17, "info", "ERROR"), (0, "warning", "WARN"),
              (0, "Fatal", "CRITICAL"), (0, "", "INFO"), (0, "LOUD", "INFO"), (99, "error", "ERROR")]


def test_severity_number_ranges_then_text_give_the_level(client, key, project):
    request = export(*[{"body": text("%d %s" % (number, name)), "severityNumber": number, "severityText": name}
                       for number, name, _ in SEVERITIES])
    assert post_otlp(client, key, as_protobuf(request), PROTOBUF).status_code == 200
    drain_all()
    levels = {row["message"]: row["level"] for row in stored_logs(project.id)}
    assert levels == {"%d %s" % (number, name): level for number, name, level in SEVERITIES}


def test_timestamp_is_the_time_else_the_observed_time_else_the_time_received(client, key, project):
    with models.database.connection_context():
        # Kept forever, so that 1970 is within the past window.
        models.Project.update(retention_days=0).execute()
    before = models.utcnow()
    request = export({"body": text("time"), "timeUnixNano": str(NANOS), "observedTimeUnixNano": "1"},
                     {"body": text("observed"), "observedTimeUnixNano": NANOS},
                     {"body": text("received")},
                     # Small values are exact too: OTLP time is always nanoseconds.
                     {"body": text("early"), "timeUnixNano": "1500"})
    assert post_otlp(client, key, request).status_code == 200
    drain_all()
    times = {row["message"]: row["timestamp"] for row in stored_logs(project.id)}
    assert times["time"] == times["observed"] == AT
    assert times["early"] == datetime.datetime(1970, 1, 1, 0, 0, 0, 1)
    assert before <= times["received"] <= models.utcnow()


@pytest.mark.parametrize("content_type", [PROTOBUF, "application/json"])
def test_gzip_bodies_are_read(client, key, project, content_type):
    request = export({"body": text("compressed")})
    body = as_protobuf(request) if content_type == PROTOBUF else orjson.dumps(request)
    response = post_otlp(client, key, gzip.compress(body), content_type, {"Content-Encoding": "gzip"})
    assert response.status_code == 200
    drain_all()
    assert [row["message"] for row in stored_logs(project.id)] == ["compressed"]


def test_an_attribute_named_like_a_context_key_keeps_its_value(client, key, project):
    request = export({"body": text("in a span"), "traceId": TRACE_ID,
                      "attributes": [attribute("trace_id", text("mine"))]},
                     {"body": text("outside"), "attributes": [attribute("scope", text("mine"))]})
    assert post_otlp(client, key, request).status_code == 200
    drain_all()
    metadata = {row["message"]: row["metadata"] for row in stored_logs(project.id)}
    assert metadata["in a span"] == {"trace_id": TRACE_ID, "_trace_id": "mine"}
    assert metadata["outside"] == {"_scope": "mine"}


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_partial_success_counts_and_names_the_refused_records(client, key, project, encoding):
    too_long = "x" * 70000
    request = export({"body": text("ok")}, {"body": text(too_long)})
    if encoding == "protobuf":
        response = post_otlp(client, key, as_protobuf(request), PROTOBUF)
        partial = ExportLogsServiceResponse.FromString(response.data).partial_success
        rejected, message = partial.rejected_log_records, partial.error_message
    else:
        response = post_otlp(client, key, request)
        partial = response.json["partialSuccess"]
        rejected, message = int(partial["rejectedLogRecords"]), partial["errorMessage"]
    assert response.status_code == 200
    assert rejected == 1
    assert "resourceLogs[0].scopeLogs[0].logRecords[1]: message is longer than" in message
    drain_all()
    assert [row["message"] for row in stored_logs(project.id)] == ["ok"]


def test_warnings_are_a_partial_success_with_nothing_rejected(client, key, project):
    future = (int(datetime.datetime.now(datetime.timezone.utc).timestamp()) + 86400) * 10**9
    response = post_otlp(client, key, export({"body": text("late"), "timeUnixNano": str(future)}))
    assert response.status_code == 200
    assert response.json["partialSuccess"]["errorMessage"].startswith("accepted with warnings")
    assert int(response.json["partialSuccess"].get("rejectedLogRecords", 0)) == 0


def test_no_valid_record_is_400_with_a_bad_request_detail(client, key, project):
    response = post_otlp(client, key, as_protobuf(export({"body": text("y" * 70000)})), PROTOBUF)
    assert response.status_code == 400 and response.mimetype == PROTOBUF
    status = status_pb2.Status.FromString(response.data)
    assert status.message.startswith("no record in the request is valid")
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    [violation] = bad_request.field_violations
    assert violation.field == "resourceLogs[0].scopeLogs[0].logRecords[0]"
    assert "longer than" in violation.description
    drain_all()
    assert stored_logs() == []


@pytest.mark.parametrize("body, content_type", [
    (b"\xff\xff\xff", PROTOBUF),
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"resourceLogs": "many"}', "application/json"),
    (orjson.dumps(export({"traceId": "not hex"})), "application/json"),
    (orjson.dumps(export({"timeUnixNano": "-5"})), "application/json"),
])
def test_a_body_that_is_not_an_export_request_is_400(client, key, body, content_type):
    response = post_otlp(client, key, body, content_type)
    assert response.status_code == 400 and response.mimetype == content_type
    if content_type == PROTOBUF:
        assert status_pb2.Status.FromString(response.data).message
    else:
        assert response.json["message"] and response.json["code"] == 3
    drain_all()
    assert stored_logs() == []


def test_a_null_resource_or_scope_is_an_empty_one_as_in_proto3_json(client, key, project):
    """proto3 JSON reads null for a message field as the message unset; a null record is still refused."""
    request = {"resourceLogs": [
        {"resource": None, "scopeLogs": [{"scope": {"name": "app"}, "logRecords": [{"body": text("no resource")}]}]},
        {"resource": {"attributes": [attribute("service.name", text("billing"))]},
         "scopeLogs": [{"scope": None, "logRecords": [{"body": text("no scope")}]}]}]}
    response = post_otlp(client, key, request)
    assert response.status_code == 200 and response.json == {}, response.json
    assert post_otlp(client, key, export(None)).status_code == 400
    drain_all()
    rows = sorted(stored_logs(project.id), key=lambda row: row["message"])
    assert [(row["message"], row["metadata"]) for row in rows] == [
        ("no resource", {"scope": {"name": "app"}}), ("no scope", {"resource": {"service.name": "billing"}})]


def test_an_empty_export_is_a_success(client, key):
    assert post_otlp(client, key, {}).status_code == 200
    assert post_otlp(client, key, b"", PROTOBUF).status_code == 200
    drain_all()
    assert stored_logs() == []


def test_keys_are_checked_as_for_post_logs(client, key, project):
    body = as_protobuf(export({"body": text("x")}))
    response = post_otlp(client, None, body, PROTOBUF)
    assert response.status_code == 401
    assert "API key" in status_pb2.Status.FromString(response.data).message
    assert post_otlp(client, "lf_wrong", export({"body": text("x")})).json["code"] == 16
    response = post_otlp(client, None, body, PROTOBUF, {"Authorization": "Bearer " + key})
    assert response.status_code == 200


def test_a_read_key_cannot_send(client, project):
    with models.database.connection_context():
        read_key = models.ApiKey.issue(project, scope="read")
    response = post_otlp(client, read_key, export({"body": text("x")}))
    assert response.status_code == 403 and response.json["code"] == 7
    drain_all()
    assert stored_logs() == []


def test_other_content_types_are_415(client, key):
    response = post_otlp(client, key, b"{}", "text/plain")
    assert response.status_code == 415 and response.mimetype == "application/json"
    assert PROTOBUF in response.json["message"]


def test_too_many_records_or_bytes_are_413_in_the_request_encoding(bound, project, key):
    client = create_app(bound.replace(max_records=2)).test_client()
    response = post_otlp(client, key, as_protobuf(export(*[{"body": text("x")}] * 3)), PROTOBUF)
    assert response.status_code == 413
    assert "at most 2 records" in status_pb2.Status.FromString(response.data).message
    response = post_otlp(client, key, b"x" * (bound.max_body_bytes + 1), PROTOBUF)
    assert response.status_code == 413 and response.mimetype == PROTOBUF
    assert "larger than" in status_pb2.Status.FromString(response.data).message
    drain_all()
    assert stored_logs() == []


def test_a_project_past_its_rate_gets_429_with_retry_after(bound, project, key):
    client = create_app(bound.replace(rate_limit=2, rate_burst=2)).test_client()
    assert post_otlp(client, key, as_protobuf(export(*[{"body": text("x")}] * 2)), PROTOBUF).status_code == 200
    response = post_otlp(client, key, as_protobuf(export({"body": text("x")})), PROTOBUF)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert "records per second" in status_pb2.Status.FromString(response.data).message


def test_a_full_queue_gets_503_with_retry_after(bound, project, key):
    client = create_app(bound.replace(max_queue=1)).test_client()
    response = post_otlp(client, key, export(*[{"body": text("x")}] * 2))
    assert response.status_code == 503 and response.headers["Retry-After"] == str(bound.retry_after_seconds)
    assert response.json["code"] == 14


@pytest.fixture
def live_url(app):
    """The app served over real HTTP on a free port, in a thread."""
    with serve(app) as base_url:
        yield base_url


# The SDK's handler is deprecated in favour of a beta package; it is the one of the pinned release train.
@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated:DeprecationWarning")
def test_the_opentelemetry_sdk_exporter_delivers_logs_with_trace_context(live_url, key, project):
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(
        endpoint=live_url + "/v1/logs", headers={"X-API-Key": key})))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    app_logger = logging.getLogger("checkout.payments")
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.DEBUG)
    tracer = TracerProvider().get_tracer("checkout")
    try:
        with tracer.start_as_current_span("pay") as span:
            app_logger.warning("card declined for order %s", "A-17", extra={"order_id": "A-17", "amount": 12.5})
            context = span.get_span_context()
        app_logger.error("outside any span")
        assert provider.force_flush(timeout_millis=15000)
    finally:
        app_logger.removeHandler(handler)
        provider.shutdown()

    def both_stored():
        drain_all()
        rows = stored_logs(project.id)
        return rows if len(rows) == 2 else None

    rows = wait_for(both_stored, timeout=30, message="the SDK's records to be stored")
    declined = next(row for row in rows if row["message"] == "card declined for order A-17")
    assert declined["level"] == "WARN"
    metadata = declined["metadata"]
    assert metadata["trace_id"] == format(context.trace_id, "032x")
    assert metadata["span_id"] == format(context.span_id, "016x")
    assert metadata["order_id"] == "A-17" and metadata["amount"] == 12.5
    assert (metadata["severity_text"], metadata["severity_number"]) == ("WARN", 13)
    assert metadata["code.function.name"] == "test_the_opentelemetry_sdk_exporter_delivers_logs_with_trace_context"
    assert metadata["resource"]["service.name"] == "checkout"
    assert metadata["scope"]["name"] == "checkout.payments"
    outside = next(row for row in rows if row["message"] == "outside any span")
    assert outside["level"] == "ERROR" and "trace_id" not in outside["metadata"]


# AnyValues as OTLP/JSON senders write them, and as they should not: otlp.json_value_of
# reads them itself (json_format takes 7 µs an item) and must agree with json_format.
ANY_VALUES = [
    None, {}, text(""), text("é\u2028"), {"string_value": "snake"}, {"stringValue": None}, {"stringValue": 5},
    {"boolValue": True}, {"boolValue": "true"}, {"boolValue": 1}, {"bool_value": False},
    {"intValue": 5}, {"intValue": "-9223372036854775808"}, {"intValue": "9223372036854775808"},
    {"intValue": 2.0}, {"intValue": 2.5}, {"intValue": "2.0"}, {"intValue": " 5"}, {"intValue": True},
    {"intValue": "0x10"}, {"intValue": 1e30}, {"intValue": []}, {"int_value": "12"},
    {"doubleValue": 1}, {"doubleValue": 2.5}, {"doubleValue": "2.5"}, {"doubleValue": "NaN"}, {"doubleValue": "nan"},
    {"doubleValue": "Infinity"}, {"doubleValue": "-Infinity"}, {"doubleValue": "1e400"}, {"doubleValue": "abc"},
    {"doubleValue": {}}, {"double_value": -0.0},
    {"bytesValue": "AP8="}, {"bytesValue": "AP8"}, {"bytesValue": "-_8="}, {"bytesValue": "+/8="}, {"bytesValue": ""},
    {"bytesValue": 5}, {"bytes_value": "aGk="},
    {"arrayValue": {}}, {"arrayValue": None}, {"arrayValue": {"values": None}}, {"arrayValue": {"values": []}},
    {"arrayValue": {"values": [text("a"), {"intValue": 1}, None, {}]}}, {"arrayValue": {"values": [{}]}}, {"arrayValue": {"values": {}}},
    {"arrayValue": {"values": [5]}}, {"array_value": {"values": [{"arrayValue": {"values": [text("deep")]}}]}},
    {"kvlistValue": {}}, {"kvlistValue": {"values": [attribute("a", text("b")), {"key": "n"}, {}]}},
    {"kvlistValue": {"values": [{"key": 5, "value": text("x")}]}}, {"kvlistValue": {"values": [{"key": None}]}},
    {"kvlistValue": {"values": [attribute("a", text("1")), attribute("a", text("2"))]}},
    {"kvlistValue": {"values": [5]}}, {"kvlistValue": {"values": {}}}, {"kvlist_value": {"values": []}},
    {"stringValue": "a", "intValue": 1}, {"stringValue": "a", "unknown": 1}, {"unknown": 1}, [text("a")], "a", 5,
]


@pytest.mark.parametrize("value", ANY_VALUES, ids=[orjson.dumps(value).decode()[:60] for value in ANY_VALUES])
def test_otlp_json_values_are_read_as_json_format_reads_them(value):
    def read(convert):
        try:
            return convert()
        except (json_format.ParseError, ValueError, TypeError, AttributeError) as error:
            return type(error).__name__ if isinstance(error, otlp.records.InvalidRecord) else "refused"
    budget = lambda: otlp.Values(1000)  # noqa: E731
    expected = read(lambda: otlp.value_of(json_format.ParseDict(value, AnyValue(), ignore_unknown_fields=True),
                                          budget())
                    if isinstance(value, dict) else json_format.ParseDict({"body": value}, LogRecord()) and None)
    assert read(lambda: otlp.json_value_of(value, budget())) == expected
