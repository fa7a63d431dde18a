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


def dense_records(count=1000, containers=3000):
    """A JSON array of `count` records whose metadata holds `containers` empty lists each: within every limit."""
    record = b'{"message": "dense", "metadata": {"a": [' + b",".join([b"[]"] * containers) + b"]}}"
    return gzip.compress(b"[" + b",".join([record] * count) + b"]")


def gzip_members(count):
    """`count` empty gzip members, one after the other, then one holding a record."""
    return gzip.compress(b"") * count + gzip.compress(b'{"message": "after the members"}')
