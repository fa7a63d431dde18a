"""Request bodies that once cost a web worker gigabytes or seconds, built as issue 12 describes them.

Each is about 10 KB gzipped (the smallest a client can send them in) and
within LOGFLOW_MAX_DECODED_BYTES once inflated. Used by tests/test_bounds.py
and bench/hostile.py, which measures them against a running LogFlow.
"""
import functools
import gzip

from google.protobuf.internal.encoder import _VarintBytes

# "{}" and a separator, 10.2 MB: about as many as LOGFLOW_MAX_DECODED_BYTES admits (the issue sent 3.5 million).
EMPTIES = 3_400_000
# Two bytes each ("\x12\x00"), in a single ResourceLogs and ScopeLogs.
PROTOBUF_EMPTIES = 5_200_000


def length_delimited(number, payload):
    """A protobuf field of wire type 2."""
    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


@functools.lru_cache(maxsize=None)
def bodies():
    """name → (path, Content-Type, gzipped body); each is refused (413) or its one record rejected (422)."""
    empties = b",".join([b"{}"] * EMPTIES)
    scope_logs = length_delimited(2, b"\x12\x00" * PROTOBUF_EMPTIES)
    return {
        "NDJSON, 3.4 million {} lines": ("/logs", "application/x-ndjson", gzip.compress(b"{}\n" * EMPTIES)),
        "JSON array of 3.4 million {}": ("/logs", "application/json", gzip.compress(b"[" + empties + b"]")),
        "one record, metadata of 3.4 million {}": (
            "/logs", "application/json",
            gzip.compress(b'{"message": "big", "metadata": {"a": [' + empties + b"]}}")),
        "OTLP protobuf, 5.2 million empty records": (
            "/v1/logs", "application/x-protobuf", gzip.compress(length_delimited(1, scope_logs))),
        "OTLP/JSON, 3.4 million empty logRecords": (
            "/v1/logs", "application/json",
            gzip.compress(b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [' + empties + b"]}]}]}")),
    }


# OTLP records of empty attributes or array items, each just within four times
# LOGFLOW_MAX_RECORD_BYTES as sent (1 MiB): nine fill LOGFLOW_MAX_DECODED_BYTES.
FAT_RECORDS = 9
FAT_RECORD_BYTES = 4 * 256 * 1024 - 64


@functools.lru_cache(maxsize=None)
def attribute_bodies():
    """name → (Content-Type, gzipped OTLP export): FAT_RECORDS records of millions of values in all, then one honest record.

    Each was accepted after 6-42 s of a worker's CPU (the reviewer's figures,
    against gunicorn) before LOGFLOW_MAX_OTLP_VALUES.
    """
    honest_protobuf = length_delimited(5, length_delimited(1, b"honest"))  # body: stringValue
    honest_json = b'{"body": {"stringValue": "honest"}}'
    empty_items = FAT_RECORD_BYTES // 2

    def protobuf(record):
        records = b"".join(length_delimited(2, record) for record in [record] * FAT_RECORDS + [honest_protobuf])
        return gzip.compress(length_delimited(1, length_delimited(2, records)))

    def json(record):
        records = b",".join([record] * FAT_RECORDS + [honest_json])
        return gzip.compress(b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [' + records + b"]}]}]}")
    return {
        # LogRecord.attributes (field 6): empty KeyValues.
        "protobuf, empty attributes": ("application/x-protobuf", protobuf(b"\x32\x00" * empty_items)),
        # LogRecord.body (5) → AnyValue.array_value (5) → ArrayValue.values (1): empty AnyValues.
        "protobuf, empty array items": ("application/x-protobuf", protobuf(
            length_delimited(5, length_delimited(5, b"\x0a\x00" * (empty_items - 8))))),
        "OTLP/JSON, empty attributes": ("application/json", json(
            b'{"attributes": [' + b",".join([b"{}"] * (FAT_RECORD_BYTES // 3)) + b"]}")),
        "OTLP/JSON, empty array items": ("application/json", json(
            b'{"body": {"arrayValue": {"values": [' + b",".join([b"{}"] * (FAT_RECORD_BYTES // 3 - 12)) + b"]}}}")),
    }


def dense_records(count=1000, containers=3000):
    """A JSON array of `count` records whose metadata holds `containers` empty lists each: within every limit."""
    record = b'{"message": "dense", "metadata": {"a": [' + b",".join([b"[]"] * containers) + b"]}}"
    return gzip.compress(b"[" + b",".join([record] * count) + b"]")


def gzip_members(count):
    """`count` empty gzip members, one after the other, then one holding a record."""
    return gzip.compress(b"") * count + gzip.compress(b'{"message": "after the members"}')
