"""Property tests: whatever a client sends, LogFlow stores it or says why not, never a 5xx.

normalize() must turn any JSON value into a record every writer can store, or
raise InvalidRecord; parse_body() must read any bytes or raise one of its two
errors; and over HTTP every body gets a 202 (and is then stored by both
writers) or a 4xx with a JSON error.
"""
import datetime
import gzip
import json
import math
import operator
import os
import shutil
import uuid
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import config
import models
import records
import storage
from helpers import drain_all, file_records, post_logs, stored_logs

# Long generated strings make Hypothesis warn about their repr; they are meant to be long.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# CI replays the same examples on every run; elsewhere each run explores anew.
settings.register_profile("logflow-ci", derandomize=True, database=None, print_blob=True)
PROFILE = settings.get_profile("logflow-ci" if os.environ.get("CI") else "default")


def properties(max_examples):
    """Hypothesis settings for these tests: bounded, no deadline, fixtures shared by examples."""
    return settings(PROFILE, max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


def weighted(*choices):
    """One of (weight, strategy) choices; one_of() would flatten nested one_of()s and lose the weights."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


NOW = datetime.datetime(2026, 11, 27, 12, 0, 0)
RECEIVED_AT = records.format_time(NOW)
LIMITS = config.Settings()
FIELD_NAMES = [name for names in records.ALIASES.values() for name in names]

# Characters that stores and encoders choke on: NUL (PostgreSQL), lone
# surrogates (UTF-8), CSV and JSON syntax, line separators, non-BMP text.
AWKWARD = ["\x00", "\ud800", "\udfff", "\ufffd", "\u2028", "\ufeff", "\uffff", "\U0010ffff",
           "\U0001f600", "é", "\x7f", "\\", '"', "\n", "\r", "\t", ",", ".", "a", "_", " "]

TEXT = st.one_of(
    st.text(max_size=20),
    st.text(st.sampled_from(AWKWARD), max_size=12),
    # Long strings, around the 64 KiB message limit in every UTF-8 width.
    st.builds(operator.mul, st.sampled_from(["x", "é", "\u20ac", "\U0001f600", "a\x00"]),
              st.integers(1, 70_000)),
)
KEYS = st.one_of(TEXT, st.sampled_from(FIELD_NAMES + ["id", "metadata", "_metadata", "original_timestamp",
                                                      "_msg", "__msg", ""]))
NUMBERS = st.one_of(
    st.integers(),
    st.integers(-2**70, 2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**63 - 1, 10**308, 2**1024, -2**2000]),
    st.floats(),
    st.sampled_from([1.5e300, 5e-324, -0.0, 1.7976931348623157e308, 1e16, 0.1]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)


def nest(value, depth, as_dict):
    """value wrapped in depth lists or single-key objects."""
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


def json_values(scalars, keys, max_depth):
    """Any JSON value: recursive containers, and some nested far deeper than recursion reaches."""
    shallow = st.recursive(scalars, lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)), max_leaves=20)
    deep = st.builds(nest, shallow, st.integers(1, max_depth), st.booleans())
    return weighted((4, shallow), (1, deep))


JSON = json_values(SCALARS, KEYS, 150)


def any_case(name):
    return st.builds(lambda flips, pad: pad + "".join(
        c.upper() if flip else c for c, flip in zip(name, flips)) + pad,
        st.lists(st.booleans(), min_size=len(name), max_size=len(name)), st.sampled_from(["", " ", "\t"]))


LEVELS = st.one_of(
    st.sampled_from(sorted(records.LEVEL_NAMES)).flatmap(any_case),
    st.integers(-5, 100), st.floats(-1, 100), st.from_regex(r"\A[0-9]{1,25}\Z"),
    # Unicode digits: "²" is a digit to str.isdigit() but not to int().
    st.sampled_from(["²", "١٢", "٣", "𝟕", "9" * 5000, "0" * 4400, " 4 ", "4.5", "-1", ""]),
    JSON,
)
OFFSETS = st.timedeltas(min_value=datetime.timedelta(hours=-23, minutes=-59),
                        max_value=datetime.timedelta(hours=23, minutes=59))
TIMESTAMPS = st.one_of(
    st.builds(lambda moment, offset, sep: moment.replace(tzinfo=offset).isoformat(sep),
              st.datetimes(), st.none() | OFFSETS.map(datetime.timezone), st.sampled_from("T t")),
    st.integers(0, 2**64), st.integers(-10, 10**22), st.floats(), st.floats(0, 1e21),
    st.from_regex(r"\A[0-9]{1,24}(\.[0-9]{0,12})?\Z"),
    st.sampled_from(["²", "١٧٠٠٠٠٠٠٠٠", "9" * 5000, "1" * 400 + ".5", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2026-11-27T10:00:00Z", "1e10", "."]),
    JSON,
)
IDS = st.one_of(st.uuids().map(str), st.uuids().map(lambda value: "{%s}" % str(value).upper()),
                st.uuids().map(lambda value: value.hex), JSON)

FIELDS = {name: TEXT | JSON for name in records.ALIASES["message"]}
FIELDS.update({name: LEVELS for name in records.ALIASES["level"]})
FIELDS.update({name: TIMESTAMPS for name in records.ALIASES["timestamp"]})
FIELDS.update({"metadata": st.dictionaries(KEYS, JSON, max_size=6) | JSON, "id": IDS})


def merged(fields, extra):
    extra.update(fields)
    return extra


def raw_records(required):
    """Objects with some of LogFlow's fields (those named always) and others beside them."""
    return st.builds(merged, st.fixed_dictionaries(
        {name: weighted((3, TEXT), (1, FIELDS[name])) for name in required},
        optional={name: value for name, value in FIELDS.items() if name not in required}),
        st.dictionaries(KEYS, JSON, max_size=4))


# Records that use LogFlow's fields, anything else at the top level, and any JSON at all.
RAW_RECORDS = weighted((2, raw_records(["message"])), (1, raw_records(["msg"])), (1, raw_records(["@m"])),
                       (1, raw_records([])), (1, JSON))

# Records that mostly pass, so that the writers see every kind of value.
STORABLE_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64),
                             st.floats(allow_nan=False, allow_infinity=False),
                             st.sampled_from([1.5e300, 5e-324, -0.0, 1.7976931348623157e308, 2**70]), TEXT)
# Within MAX_DEPTH (64) counting the record and its metadata.
STORABLE_JSON = json_values(STORABLE_SCALARS, KEYS, 58)
STORABLE_RECORDS = st.builds(
    merged,
    st.fixed_dictionaries(
        {"message": st.text(max_size=50) | st.text(st.sampled_from(AWKWARD), max_size=50)},
        optional={"level": st.sampled_from(sorted(records.LEVEL_NAMES)) | st.integers(0, 100),
                  "ts": st.integers(0, 4 * 10**9) | st.floats(0, 4e9),
                  "time": st.datetimes().map(datetime.datetime.isoformat),
                  "metadata": st.dictionaries(KEYS, STORABLE_JSON, max_size=6),
                  "id": st.just(None)}),
    st.dictionaries(KEYS, STORABLE_JSON, max_size=3),
)


@properties(500)
@given(raw=RAW_RECORDS)
def test_normalize_returns_a_storable_record_or_raises_invalid_record(raw):
    try:
        record, warnings = records.normalize(raw, NOW, LIMITS)
    except records.InvalidRecord as error:
        event("invalid: %s" % str(error)[:24])
        return
    event("valid")
    assert_canonical(record)
    assert all(isinstance(warning, str) and warning for warning in warnings)
    # Nothing is dropped: metadata keeps every key sent in it, every top-level
    # field LogFlow does not read, and a replaced future timestamp.
    sent = raw.get("metadata") or {}
    used = {records._pick(raw, names)[0] for names in records.ALIASES.values()}
    extra = [key for key in raw if key not in used and key not in ("id", "metadata")]
    replaced = any("future" in warning for warning in warnings)
    assert len(record["metadata"]) == len(sent) + len(extra) + replaced


@properties(300)
@given(raws=st.lists(RAW_RECORDS, max_size=6))
def test_normalize_many_is_normalize_of_each_record(raws):
    """accept() uses normalize_many(): one JSON encoding for a request, each record's own outcome."""
    one_by_one, errors, warnings = [], [], []
    for index, raw in enumerate(raws):
        try:
            record, notes = records.normalize(raw, NOW, LIMITS)
        except records.InvalidRecord as error:
            errors.append((index, str(error)))
            continue
        one_by_one.append(record)
        warnings.extend((index, note) for note in notes)
    count, encoded, together_errors, together_warnings = records.normalize_many(raws, NOW, LIMITS)
    together = orjson.loads(encoded)
    event("slow path" if any(b in encoded for b in (b"null", b"\\u0000")) or count < len(raws) else "fast path")
    assert (together_errors, together_warnings) == (errors, warnings)
    assert count == len(together) and encoded == orjson.dumps(together)
    # Ids the client did not send are new on each call.
    without_ids = [[{**record, "id": None} for record in listed] for listed in (together, one_by_one)]
    assert without_ids[0] == without_ids[1]
    for record in together:
        assert_canonical(record)


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_canonical(record):
    """The invariants every writer relies on."""
    assert set(record) == {"id", "level", "message", "metadata", "timestamp"}
    assert str(uuid.UUID(record["id"])) == record["id"]
    assert record["level"] in records.LEVELS
    assert isinstance(record["message"], str)
    # The limit applies to the message as sent; each NUL then grows to a 3-byte U+FFFD.
    assert len(record["message"].encode("utf-8")) <= 3 * LIMITS.max_message_bytes
    assert isinstance(record["metadata"], dict)
    assert parse_time(record["timestamp"]) is not None
    assert records.format_time(parse_time(record["timestamp"])) == record["timestamp"]
    assert_storable_json(record)
    # orjson is what the spool and the file writer use: it must take the record whole.
    assert orjson.loads(orjson.dumps(record)) == record


def assert_storable_json(value, path="record"):
    """No NUL, no lone surrogate, no number JSON cannot carry, no nesting deeper than the limit."""
    if isinstance(value, str):
        assert "\x00" not in value and _encodable(value), path
    elif isinstance(value, float):
        assert math.isfinite(value), path
    elif isinstance(value, int) and not isinstance(value, bool):
        assert -2**63 <= value < 2**64, path
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_storable_json(key, path + " key")
            assert_storable_json(item, "%s[%r]" % (path, key[:20]))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_storable_json(item, "%s[%d]" % (path, index))
    else:
        assert value is None or isinstance(value, bool), path


def write_records(writer, project_id, batch):
    """Give a writer records as the consumer does: decoded (project id, received_at, record) items.

    Kept apart so that a change of the writers' input shape changes only this.
    """
    return writer.write([(project_id, RECEIVED_AT, record) for record in batch])


def parse_time(text):
    """The naive UTC datetime of a record's RFC 3339 timestamp."""
    return datetime.datetime.fromisoformat(text).replace(tzinfo=None)


def clear_stores(log_dir):
    with models.database.connection_context():
        models.Log.delete().execute()
    shutil.rmtree(log_dir, ignore_errors=True)


@properties(120)
@given(raws=st.builds(operator.add, st.lists(STORABLE_RECORDS, min_size=1, max_size=3),
                      st.lists(RAW_RECORDS, max_size=1)))
def test_every_normalized_record_is_stored_and_read_back_equal(bound, project, tmp_path, raws):
    accepted = []
    for raw in raws:
        try:
            accepted.append(records.normalize(raw, NOW, LIMITS)[0])
        except records.InvalidRecord as error:
            event("invalid: %s" % str(error)[:24])
    event("records accepted: %d" % len(accepted))
    if not accepted:
        return
    log_dir = str(tmp_path / "logs")
    clear_stores(log_dir)
    assert write_records(storage.DatabaseWriter(), project.id, accepted) == len(accepted)
    assert write_records(storage.FileWriter(log_dir), project.id, accepted) == len(accepted)

    rows = {row["id"]: row for row in stored_logs(project.id)}
    lines = {line["id"]: line for line in file_records(log_dir, project.id)}
    assert len(lines) == len(rows) == len(accepted)
    for record in accepted:
        row, line = rows[record["id"]], lines[record["id"]]
        assert (row["level"], row["message"]) == (record["level"], record["message"])
        assert row["timestamp"] == parse_time(record["timestamp"])
        assert row["received_at"] == NOW
        assert_same(row["metadata"], record["metadata"], "database metadata")
        assert (line["level"], line["message"], line["timestamp"]) == (
            record["level"], record["message"], record["timestamp"])
        assert (line["project_id"], line["received_at"]) == (project.id, RECEIVED_AT)
        assert_same(line["metadata"], record["metadata"], "file metadata")


def assert_same(stored, sent, path):
    """Equal as JSON: numbers compare by value (jsonb may give 1.5e300 back as an equal int)."""
    if isinstance(sent, (int, float)) and not isinstance(sent, bool):
        assert isinstance(stored, (int, float)) and not isinstance(stored, bool), (path, stored, sent)
        if isinstance(stored, float) or isinstance(sent, float):
            assert float(stored) == float(sent), (path, stored, sent)
        else:
            assert stored == sent, (path, stored, sent)
    elif isinstance(sent, dict):
        assert isinstance(stored, dict) and stored.keys() == sent.keys(), (path, stored, sent)
        for key in sent:
            assert_same(stored[key], sent[key], "%s[%r]" % (path, key[:20]))
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), (path, stored, sent)
        for index, (left, right) in enumerate(zip(stored, sent)):
            assert_same(left, right, "%s[%d]" % (path, index))
    else:
        assert type(stored) is type(sent) and stored == sent, (path, stored, sent)


KNOWN_CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/x-ndjson", "application/jsonl",
    "text/plain", "application/vnd.api+json", "", None, "application/xml", "multipart/form-data; boundary=x",
    "APPLICATION/JSON", ";"])
CONTENT_TYPES = st.one_of(KNOWN_CONTENT_TYPES, st.text(max_size=30))
# What an HTTP header can carry: printable Latin-1.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=30)


def json_bytes(value):
    """value as Python's json writes it: NaN, Infinity, lone surrogates and big integers included."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(json_bytes),
    st.lists(JSON.map(json_bytes), max_size=5).map(b"\n".join),
    st.lists(RAW_RECORDS.map(json_bytes), min_size=1, max_size=5).map(b"\n".join),
    st.builds(lambda body, cut: body[:cut], RAW_RECORDS.map(json_bytes), st.integers(0, 50)),
)


@properties(300)
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_parse_body_returns_a_list_or_refuses_the_body(body, content_type):
    try:
        parsed = records.parse_body(body, content_type, LIMITS)
    except records.UnsupportedMediaType:
        event("unsupported")
        return
    except records.InvalidBody as error:
        event("invalid body")
        assert str(error)
        return
    assert isinstance(parsed, list)
    if isinstance(parsed, records.Unread):
        # A large body: each record is read when normalized, or was refused unread.
        event("unread")
        for item in parsed:
            if isinstance(item, records.InvalidRecord):
                continue
            try:
                orjson.dumps(item())
            except records.InvalidBody as error:
                assert str(error)
        return
    event("parsed")
    orjson.dumps(parsed)  # what orjson read, it can write


def compress(encoding, data):
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


def without_ids(raw):
    # Client ids make two records one row; the writers' counts are checked without them.
    if isinstance(raw, dict):
        return {key: value for key, value in raw.items() if key != "id"}
    return raw


HTTP_BODIES = st.one_of(
    st.lists(RAW_RECORDS.map(without_ids), min_size=1, max_size=5).map(json_bytes),
    st.lists(STORABLE_RECORDS, min_size=1, max_size=5).map(json_bytes),
    st.lists(STORABLE_RECORDS.map(json_bytes), min_size=1, max_size=5).map(b"\n".join),
    RAW_RECORDS.map(without_ids).map(json_bytes),
    st.binary(max_size=100),
)


@properties(100)
@given(body=HTTP_BODIES, content_type=weighted((4, KNOWN_CONTENT_TYPES), (1, HEADER_TEXT)),
       encoding=st.sampled_from([None, None, "gzip", "deflate"]))
def test_any_body_is_accepted_and_stored_or_refused_with_a_4xx(client, key, project, bound, body,
                                                               content_type, encoding):
    clear_stores(bound.log_dir)
    headers = {"Content-Encoding": encoding} if encoding else {}
    response = post_logs(client, key, compress(encoding, body), headers, content_type)
    event("HTTP %d" % response.status_code)
    assert_stored_or_refused(response, project, bound.log_dir)


def assert_stored_or_refused(response, project, log_dir, expected=None):
    """202 and stored by every writer, or a 4xx with a JSON error; returns the response's JSON."""
    status = response.status_code
    assert status < 500, response.get_data()[:500]
    assert response.mimetype == "application/json"
    body = response.json
    if expected is not None:
        assert status in expected, body
    if status != 202:
        assert 400 <= status < 500 and isinstance(body["error"], str) and body["error"], body
        return body
    assert body["accepted"] >= 1 and body["rejected"] == len(body["errors"])
    drain_all()
    rows = stored_logs(project.id)
    lines = file_records(log_dir, project.id)
    assert len(rows) == len(lines) == body["accepted"], (len(rows), len(lines), body)
    assert sorted(row["message"] for row in rows) == sorted(line["message"] for line in lines)
    by_id = {line["id"]: line for line in lines}
    for row in rows:
        assert_same(row["metadata"], by_id[row["id"]]["metadata"], "stored metadata")
    return body


def gzip_members(*parts):
    return b"".join(gzip.compress(part) for part in parts)


def raw_deflate(data):
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


TEN_MB = 10 * 1024 * 1024
BIG = 9 * 1024 * 1024

# name → (body, Content-Type, extra headers, the statuses it may get)
AWKWARD_REQUESTS = {
    "empty": (b"", "application/json", {}, {400}),
    "whitespace": (b" \r\n\t ", "application/json", {}, {400}),
    "ndjson whitespace": (b"\n \n", "application/x-ndjson", {}, {400}),
    "empty array": (b"[]", "application/json", {}, {400}),
    "xml": (b"<log/>", "application/xml", {}, {415}),
    "multipart": (b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", {}, {415}),
    "image": (b"\x89PNG", "image/png", {}, {415}),
    "no content type": (b'{"message": "x"}', None, {}, {202}),
    "form type": (b'{"message": "x"}', "application/x-www-form-urlencoded", {}, {202}),
    "charset": (b'{"message": "x"}', "application/json; charset=utf-8", {}, {202}),
    "invalid utf-8": (b'{"message": "\xff\xfe"}', "application/json", {}, {400}),
    "utf-8 surrogate bytes": (b'{"message": "\xed\xa0\x80"}', "application/json", {}, {400}),
    "lone surrogate escape": (b'{"message": "\\ud800"}', "application/json", {}, {400}),
    "lone low surrogate escape": (b'{"message": "x", "m": "\\udc00"}', "application/json", {}, {400}),
    "surrogate pair escape": (b'{"message": "\\ud83d\\ude00"}', "application/json", {}, {202}),
    "raw NUL byte": (b'{"message": "a\x00b"}', "application/json", {}, {400}),
    "NUL escape": (b'{"message": "a\\u0000b", "m\\u0000": "\\u0000"}', "application/json", {}, {202}),
    "NaN": (b'{"message": "x", "metadata": {"n": NaN}}', "application/json", {}, {400}),
    "Infinity": (b'{"message": "x", "level": Infinity}', "application/json", {}, {400}),
    "-Infinity": (b'[{"message": "x", "ts": -Infinity}]', "application/json", {}, {400}),
    "NaN in ndjson": (b'{"message": "x"}\n{"message": NaN}\n', "application/x-ndjson", {}, {400}),
    "int beyond 64 bits": (b'{"message": "x", "n": 18446744073709551616, "m": -9223372036854775809}',
                           "application/json", {}, {202}),
    "int beyond float": (b'{"message": "x", "n": 1' + b"0" * 400 + b"}", "application/json", {}, {400}),
    "float overflow": (b'{"message": "x", "n": 1e400}', "application/json", {}, {400}),
    "float underflow": (b'{"message": "x", "n": 1e-400}', "application/json", {}, {202}),
    "huge level": (b'{"message": "x", "level": 1e300}', "application/json", {}, {202}),
    "huge epoch": (b'{"message": "x", "ts": 1e305}', "application/json", {}, {422}),
    "epoch beyond 64 bits": (b'{"message": "x", "ts": 99999999999999999999999}', "application/json", {},
                             {422}),
    "digit string level": (b'{"message": "x", "level": "' + b"9" * 5000 + b'"}', "application/json", {},
                           {422}),
    "digit string epoch": (b'{"message": "x", "ts": "' + b"9" * 5000 + b'"}', "application/json", {},
                           {422}),
    "superscript level": ('{"message": "x", "level": "²"}'.encode(), "application/json", {}, {422}),
    "superscript epoch": ('{"message": "x", "ts": "1²"}'.encode(), "application/json", {}, {422}),
    "duplicate keys": (b'{"message": "a", "message": "b", "level": 1, "level": "info"}', "application/json",
                       {}, {202}),
    "nested 2000 deep": (b'{"message": "x", "metadata": {"a": ' + b"[" * 2000 + b"]" * 2000 + b"}}",
                         "application/json", {}, {400}),
    "nested 2000 deep ndjson": (b'{"message": "x"}\n' + b"[" * 2000 + b"]" * 2000, "application/x-ndjson",
                                {}, {400}),
    "nested 200 deep": (orjson.dumps({"message": "x", "metadata": nest(1, 200, True)}), "application/json",
                        {}, {202}),
    # Deeper than orjson writes: refused at the door rather than failing in the spool.
    "nested 300 deep": (json.dumps({"message": "x", "metadata": nest(1, 300, True)}).encode(),
                        "application/json", {}, {422}),
    "nested 60 deep": (orjson.dumps({"message": "x", "metadata": {"a": nest(1, 60, False)}}),
                       "application/json", {}, {202}),
    "scalar body": (b"42", "application/json", {}, {422}),
    "string body": (b'"message"', "application/json", {}, {422}),
    "null body": (b"null", "application/json", {}, {422}),
    "array of nulls": (b"[null, null]", "application/json", {}, {422}),
    "BOM": (b'\xef\xbb\xbf{"message": "x"}', "application/json", {}, {202, 400}),
    "truncated gzip": (gzip.compress(b'{"message": "x"}')[:-10], "application/json",
                       {"Content-Encoding": "gzip"}, {400}),
    "gzip header only": (gzip.compress(b"")[:10], "application/json", {"Content-Encoding": "gzip"}, {400}),
    "not gzip": (b'{"message": "x"}', "application/json", {"Content-Encoding": "gzip"}, {400}),
    "not deflate": (b'{"message": "x"}', "application/json", {"Content-Encoding": "deflate"}, {400}),
    "gzip of nothing": (gzip.compress(b""), "application/json", {"Content-Encoding": "gzip"}, {400}),
    "gzip members": (gzip_members(b'{"message": "a"}\n', b'{"message": "b"}\n'), "application/x-ndjson",
                     {"Content-Encoding": "gzip"}, {202}),
    "gzip then garbage": (gzip.compress(b'{"message": "a"}') + b"garbage", "application/json",
                          {"Content-Encoding": "gzip"}, {400}),
    "raw deflate": (raw_deflate(b'{"message": "x"}'), "application/json", {"Content-Encoding": "deflate"},
                    {202}),
    "x-gzip upper case": (gzip.compress(b'{"message": "x"}'), "application/json",
                          {"Content-Encoding": " X-GZIP "}, {202}),
    "brotli": (b'{"message": "x"}', "application/json", {"Content-Encoding": "br"}, {415}),
    "two encodings": (b'{"message": "x"}', "application/json", {"Content-Encoding": "gzip, gzip"}, {415}),
    "gzip bomb": (gzip.compress(b"[" + b" " * (TEN_MB + 10) + b"]"), "application/json",
                  {"Content-Encoding": "gzip"}, {413}),
    "deflate bomb": (zlib.compress(b" " * (TEN_MB + 1)), "application/json", {"Content-Encoding": "deflate"},
                     {413}),
    "10 MB body": (b'{"message": "' + b"x" * TEN_MB + b'"}', "application/json", {}, {413}),
    "10 MB message, gzipped": (gzip.compress(b'{"message": "' + b"x" * BIG + b'"}'), "application/json",
                               {"Content-Encoding": "gzip"}, {422}),
    # Records larger than LOGFLOW_MAX_RECORD_BYTES (256 KiB) as stored.
    "9 MB metadata string, gzipped": (
        gzip.compress(b'{"message": "x", "metadata": {"blob": "' + b"\\u0000y" * (BIG // 7) + b'"}}'),
        "application/json", {"Content-Encoding": "gzip"}, {422}),
    "9 MB key, gzipped": (gzip.compress(b'{"message": "x", "' + b"k" * BIG + b'": 1}'), "application/json",
                          {"Content-Encoding": "gzip"}, {422}),
    "1001 records": (orjson.dumps([{"message": "m"}] * 1001), "application/json", {}, {413}),
    "1000 records": (orjson.dumps([{"message": "m", "i": i} for i in range(1000)]), "application/json", {},
                     {202}),
    "message at the limit": (orjson.dumps({"message": "\U0001f600" * (16 * 1024)}), "application/json", {},
                             {202}),
    "message over the limit": (orjson.dumps({"message": "\U0001f600" * (16 * 1024) + "x"}),
                               "application/json", {}, {422}),
    # The PostgreSQL writer sends rows as CSV through COPY, where "\\." alone on a line ends the data.
    "CSV and COPY syntax": (orjson.dumps([{"message": m, "metadata": {m: m}} for m in [
        "\\.", "a\n\\.\nb", "\r\n\\.\r\n", '"', '","', "\\N", "", "NULL", "a,b", "\\", "\t"]]),
        "application/json", {}, {202}),
    "underscore collisions": (b'{"message": "x", "metadata": {"a": 1, "_a": 2}, "a": 3, "_a": 4}',
                              "application/json", {}, {202}),
}


@pytest.mark.parametrize("name", list(AWKWARD_REQUESTS))
def test_awkward_requests_are_stored_or_refused_with_a_4xx(client, key, project, bound, name):
    body, content_type, headers, expected = AWKWARD_REQUESTS[name]
    response = post_logs(client, key, body, headers, content_type)
    assert_stored_or_refused(response, project, bound.log_dir, expected)


def test_nothing_is_lost_to_underscore_collisions(client, key, project):
    body = {"message": "x", "metadata": {"a": 1, "_a": 2}, "a": 3, "_a": 4}
    assert post_logs(client, key, body).status_code == 202
    drain_all()
    [row] = stored_logs(project.id)
    assert sorted(row["metadata"].values()) == [1, 2, 3, 4]


@pytest.mark.parametrize("headers", [
    {"X-API-Key": "lf_" + "x" * 43}, {"X-API-Key": "x" * 10_000}, {"X-API-Key": "é\u00ff"},
    {"Authorization": "Bearer"}, {"Authorization": "Bearer    "}, {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "bearer " + "y" * 300}, {"X-API-Key": " "},
])
def test_bad_keys_are_401_whatever_the_body(client, headers):
    for body in (b"", b"\xff", b'{"message": "x"}'):
        response = client.post("/logs", data=body, headers=headers, content_type="application/json")
        assert response.status_code == 401 and response.json["error"]
