"""The record parser: levels, timestamps, aliases, and what makes a record storable."""
import copy
import datetime
import os
import time
import uuid

import orjson
import pytest

import config
import records
from records import InvalidBody, InvalidRecord, UnsupportedMediaType

NOW = datetime.datetime(2026, 11, 27, 12, 0, 0)
LIMITS = config.Settings()


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def normalize(raw):
    return records.normalize(raw, NOW, LIMITS)


@pytest.mark.parametrize("given, level", [
    ("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARN"), ("warn", "WARN"),
    ("error", "ERROR"), ("FATAL", "CRITICAL"), ("critical", "CRITICAL"), ("trace", "DEBUG"),
    ("Information", "INFO"), ("notice", "INFO"), (None, "INFO"), ("silly", "DEBUG"), ("http", "DEBUG"),
    (0, "CRITICAL"), (3, "ERROR"), (4, "WARN"), (6, "INFO"), (7, "DEBUG"), ("4", "WARN"),
    (10, "DEBUG"), (20, "DEBUG"), (30, "INFO"), (40, "WARN"), (50, "ERROR"), (60, "CRITICAL"),
])
def test_levels_map_names_syslog_and_pino_numbers(given, level):
    assert records.parse_level(given) == level


@pytest.mark.parametrize("given", ["loud", True, -1, float("nan"), [1]])
def test_unknown_levels_are_refused(given):
    with pytest.raises(InvalidRecord):
        records.parse_level(given)


@pytest.mark.parametrize("given, expected", [
    ("2026-11-27T10:00:00Z", datetime.datetime(2026, 11, 27, 10)),
    ("2026-11-27t10:00:00.5z", datetime.datetime(2026, 11, 27, 10, 0, 0, 500000)),
    ("2026-11-27T12:00:00+02:00", datetime.datetime(2026, 11, 27, 10)),
    ("2026-11-27 10:00:00", datetime.datetime(2026, 11, 27, 10)),
    ("2026-11-27T10:00:00.123456789Z", datetime.datetime(2026, 11, 27, 10, 0, 0, 123456)),
    (1700000000, datetime.datetime(2023, 11, 14, 22, 13, 20)),
    (1700000000.25, datetime.datetime(2023, 11, 14, 22, 13, 20, 250000)),
    (1700000000123, datetime.datetime(2023, 11, 14, 22, 13, 20, 123000)),
    (1700000000123456, datetime.datetime(2023, 11, 14, 22, 13, 20, 123456)),
    (1700000000123456789, datetime.datetime(2023, 11, 14, 22, 13, 20, 123456)),
    ("1700000000", datetime.datetime(2023, 11, 14, 22, 13, 20)),
])
def test_timestamps_in_every_accepted_form(given, expected):
    assert records.parse_timestamp(given) == expected


@pytest.mark.parametrize("given", ["yesterday", "", True, -5, {"t": 1}, "2026-13-01T00:00:00Z"])
def test_bad_timestamps_are_refused(given):
    with pytest.raises(InvalidRecord):
        records.parse_timestamp(given)


def test_aliases_and_extra_fields():
    record, warnings = normalize({"msg": "hi", "severity": "warning", "ts": 1700000000,
                                  "service": "api", "metadata": {"user": 7, "service": "x"}})
    assert record["message"] == "hi"
    assert record["level"] == "WARN"
    assert record["timestamp"] == "2023-11-14T22:13:20.000000Z"
    assert record["metadata"] == {"user": 7, "service": "x", "_service": "api"}
    assert warnings == []


def test_canonical_field_wins_and_the_alias_is_kept_in_metadata():
    record, _ = normalize({"message": "canonical", "msg": "alias", "@t": "2026-01-01T00:00:00Z"})
    assert record["message"] == "canonical"
    assert record["metadata"] == {"msg": "alias"}
    assert record["timestamp"] == "2026-01-01T00:00:00.000000Z"


def test_new_ids_are_version_7_uuids_ordered_by_time():
    before = time.time_ns() // 1_000_000
    ids = [records.random_uuid() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(value).version == 7 and uuid.UUID(value).variant == uuid.RFC_4122
               and str(uuid.UUID(value)) == value for value in ids)
    # The first 48 bits are the Unix time in milliseconds when the id was made.
    stamps = [uuid.UUID(value).int >> 80 for value in ids]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    # The other 74 bits are random: no two ids of the same millisecond agree on them.
    assert len({value[14:] for value in ids}) == 1000


def test_defaults():
    record, _ = normalize({"message": "x"})
    assert record["level"] == "INFO"
    assert record["metadata"] == {}
    assert record["timestamp"] == records.format_time(NOW)
    assert len(record["id"]) == 36


def test_client_ids_are_canonical_uuids():
    record, _ = normalize({"message": "x", "id": "0E3A6A3C-5B7E-4C1B-9E3C-2D6B1A0F9C11"})
    assert record["id"] == "0e3a6a3c-5b7e-4c1b-9e3c-2d6b1a0f9c11"
    with pytest.raises(InvalidRecord, match="UUID"):
        normalize({"message": "x", "id": "not-a-uuid"})


def test_future_timestamps_are_replaced_and_kept():
    future = "2026-11-27T14:00:00Z"
    record, warnings = normalize({"message": "x", "timestamp": future})
    assert record["timestamp"] == records.format_time(NOW)
    assert record["metadata"]["original_timestamp"] == future
    assert warnings and "future" in warnings[0]
    near, warnings = normalize({"message": "x", "timestamp": "2026-11-27T12:30:00Z"})
    assert near["timestamp"] == "2026-11-27T12:30:00.000000Z" and not warnings


def test_numbers_too_large_for_a_float_are_judged_not_crashed_on():
    # int("9" * 400) is a valid int that math.isfinite() cannot convert.
    assert records.parse_level("9" * 400) == "CRITICAL"
    with pytest.raises(InvalidRecord, match="out of range"):
        records.parse_timestamp("9" * 400)
    with pytest.raises(InvalidRecord, match="out of range"):
        records.parse_timestamp(-10**400)


@pytest.mark.parametrize("raw", [
    {"message": "x", "timestamp": "2026-11-27T14:00:00Z", "metadata": {"a": 1}},
    {"msg": "x", "service": "api", "metadata": {"a": 1}},
])
def test_the_callers_record_is_left_as_it_was_sent(raw):
    sent = copy.deepcopy(raw)
    record, _ = normalize(raw)
    assert raw == sent and record["metadata"] != sent["metadata"]


def test_nul_characters_are_made_storable():
    record, warnings = normalize({"message": "a\x00b", "metadata": {"k\x00": ["v\x00", {"d": "\x00"}]}})
    assert record["message"] == "a\ufffdb"
    assert record["metadata"] == {"k\ufffd": ["v\ufffd", {"d": "\ufffd"}]}
    assert warnings == ["NUL characters were replaced by U+FFFD"]


@pytest.mark.parametrize("raw, error", [
    ({"level": "info"}, "message is required"),
    ({"message": 5}, "message must be a string"),
    ({"message": "x" * (64 * 1024 + 1)}, "longer than"),
    ({"message": "x", "metadata": [1]}, "metadata must be a JSON object"),
    ({"message": "x", "metadata": {"a": nested(300)}}, "nested deeper"),
    ("just a string", "JSON object"),
])
def test_invalid_records(raw, error):
    with pytest.raises(InvalidRecord, match=error):
        normalize(raw)


def test_message_limit_counts_utf8_bytes():
    normalize({"message": "é" * (32 * 1024)})
    with pytest.raises(InvalidRecord):
        normalize({"message": "é" * (32 * 1024 + 1)})


def test_parse_body_shapes():
    assert records.parse_body(b'{"message": "a"}', "application/json", LIMITS) == [{"message": "a"}]
    assert records.parse_body(b'[{"message": "a"}, 1]', "application/json", LIMITS) == [{"message": "a"}, 1]
    ndjson = b'{"message": "a"}\n\n{"message": "b"}\n'
    assert records.parse_body(ndjson, "application/x-ndjson", LIMITS) == [{"message": "a"}, {"message": "b"}]
    # NDJSON sent as JSON, as some shippers do.
    assert len(records.parse_body(ndjson, "application/json; charset=utf-8", LIMITS)) == 2


@pytest.mark.parametrize("body, content_type", [
    (b"", "application/json"), (b"   \n", "application/json"), (b"{nope", "application/json"),
    (b'{"message": NaN}', "application/json"), (b'"\\ud800"', "application/json"),
    (b'\xff\xfe', "application/json"), (b'{"a": 1}\n{bad', "application/x-ndjson"),
    (b"\n\n", "application/x-ndjson"),
])
def test_unreadable_bodies(body, content_type):
    with pytest.raises(InvalidBody):
        records.parse_body(body, content_type, LIMITS)


# Invalid pretty-printed JSON of more lines than a request may hold records: once
# counted as NDJSON lines (413); parsed whole, and scanned (over 1 MiB).
# 500 records of 7 lines each: within the record limit, over it in lines.
PRETTY = orjson.dumps([{"message": "m%d" % n, "metadata": {"a": 1, "b": 2}} for n in range(500)],
                      option=orjson.OPT_INDENT_2)


@pytest.mark.parametrize("body", [PRETTY[:-1], PRETTY.replace(b"\n", b"\r\n")[:-1],
                                  PRETTY[:-1] + b" " * (1 << 20), b"{\n" + b'"message": "x",\n' * 1500],
                         ids=["truncated", "CRLF", "over 1 MiB", "object"])
def test_invalid_pretty_printed_json_is_invalid_whatever_its_lines(body):
    assert body.count(b"\n") > LIMITS.max_records
    with pytest.raises(InvalidBody, match="the body is not valid JSON"):
        records.parse_body(body, "application/json", LIMITS)
    # NDJSON labelled as JSON is still read as lines, and counted so.
    with pytest.raises(records.TooManyRecords):
        records.parse_body(b'{"message": "a"}\n' * (LIMITS.max_records + 1), "application/json", LIMITS)


def test_unsupported_content_type():
    with pytest.raises(UnsupportedMediaType):
        records.parse_body(b"<log/>", "application/xml", LIMITS)


def test_a_forked_process_draws_ids_of_its_own():
    records.random_uuid()  # fills this thread's pool
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writer, records.random_uuid().encode())
        os._exit(0)
    os.waitpid(child, 0)
    # The random endings: the time prefixes alone would differ across a millisecond.
    assert os.read(reader, 64).decode()[14:] != records.random_uuid()[14:]
