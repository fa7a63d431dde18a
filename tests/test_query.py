"""GET /logs and GET /logs/<id> on both backends: scopes, filters, keyset pages, plans."""
import base64
import collections
import datetime
import logging
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import orjson
import peewee
import psycopg2
import pytest

import models
import query
import records
import storage
import tasks
from helpers import drain_all, post_logs
from logflow import KeyCache, create_app
from models import ApiKey, Project
from processes import ROOT, child_pids, make_service, unique_database_name

# One data set for every filter case: (message, level, timestamp, metadata).
SAMPLES = [
    ("disk full on /var", "ERROR", "2026-11-27T10:00:00Z", {"host": "a", "http": {"status": 500}}),
    ("Disk almost full", "WARN", "2026-11-27T10:00:01Z", {"host": "b", "user_id": 42}),
    ("user 42 signed in", "INFO", "2026-11-27T10:00:02Z", {"user_id": "42"}),
    ("cache hit ratio 100%", "DEBUG", "2026-11-27T10:00:03Z", {"user_id": 420, "ok": True}),
    ("cache hit ratio 1000", "DEBUG", "2026-11-27T10:00:04Z", {"ok": 1, "http": {"status": "500"}}),
    ("Über-Fehler in a_b", "CRITICAL", "2026-11-27T10:00:05Z", {"http": {"status": 500.0}, "a.b": 1}),
    ("über-fehler in axb", "ERROR", "2026-11-27T10:00:06Z", {"nested": {"user_id": 42}, "user_id": 42.5}),
]


@pytest.fixture
def samples(client, key):
    """SAMPLES stored for the project, through the API and a drain."""
    body = [{"message": message, "level": level, "timestamp": timestamp, "metadata": metadata}
            for message, level, timestamp, metadata in SAMPLES]
    assert post_logs(client, key, body).status_code == 202
    drain_all()


def get(client, read_key, path="/logs", **params):
    """GET a read route with the read key; returns the response."""
    return client.get(path, query_string=params, headers={"Authorization": "Bearer " + read_key})


def messages(response):
    assert response.status_code == 200, response.json
    return [log["message"] for log in response.json["logs"]]


def test_scopes_ingest_keys_write_and_read_keys_read(client, key, read_key, samples):
    refused = client.get("/logs", headers={"X-API-Key": key})
    assert refused.status_code == 403 and "scope" in refused.json["error"]
    assert client.get("/logs").status_code == 401
    assert client.get("/logs", headers={"X-API-Key": "lf_" + "x" * 43}).status_code == 401
    written = post_logs(client, read_key, {"message": "from a read key"})
    assert written.status_code == 403 and "scope ingest" in written.json["error"]
    drain_all()
    assert len(messages(get(client, read_key))) == len(SAMPLES)


def test_a_read_key_sees_only_its_own_project(client, key, read_key, samples, bound):
    with models.database.connection_context():
        other = Project.create(name="other")
        other_ingest, other_read = ApiKey.issue(other), ApiKey.issue(other, scope="read")
    post_logs(client, other_ingest, {"message": "secret of other"})
    drain_all()
    assert "secret of other" not in messages(get(client, read_key, limit=1000))
    [theirs] = get(client, other_read).json["logs"]
    assert theirs["message"] == "secret of other"
    missing = get(client, read_key, "/logs/" + theirs["id"])
    assert missing.status_code == 404 and missing.json == {
        "error": "this project has no stored log with id %s" % theirs["id"]}
    assert get(client, other_read, "/logs/" + theirs["id"]).status_code == 200


def test_a_deactivated_project_cannot_read(client, project, read_key):
    with models.database.connection_context():
        Project.update(is_active=False).where(Project.id == project.id).execute()
    assert get(client, read_key).status_code == 403


def test_newest_first_by_default_oldest_first_on_request_and_the_shape_of_a_log(client, read_key, samples):
    newest = get(client, read_key)
    assert messages(newest) == [sample[0] for sample in reversed(SAMPLES)]
    assert newest.json["next_cursor"] is None
    assert messages(get(client, read_key, order="asc")) == [sample[0] for sample in SAMPLES]
    log = newest.json["logs"][-1]
    assert set(log) == {"id", "timestamp", "level", "message", "metadata", "received_at"}
    assert str(uuid.UUID(log["id"])) == log["id"]
    assert log["timestamp"] == "2026-11-27T10:00:00.000000Z" and log["received_at"].endswith("Z")
    assert (log["level"], log["metadata"]) == ("ERROR", {"host": "a", "http": {"status": 500}})


@pytest.mark.parametrize("params, expected", [
    ({"level": "ERROR"}, ["über-fehler in axb", "disk full on /var"]),
    ({"level": "error,warning"}, ["über-fehler in axb", "Disk almost full", "disk full on /var"]),
    ({"level": ["CRITICAL", "debug"]}, ["Über-Fehler in a_b", "cache hit ratio 1000", "cache hit ratio 100%"]),
    ({"min_level": "WARN"}, ["über-fehler in axb", "Über-Fehler in a_b", "Disk almost full", "disk full on /var"]),
    ({"min_level": "ERROR", "level": "INFO,ERROR"}, ["über-fehler in axb", "disk full on /var"]),
    # since is inclusive, until exclusive; the formats are ingestion's.
    ({"since": "2026-11-27T10:00:05Z"}, ["über-fehler in axb", "Über-Fehler in a_b"]),
    ({"until": "2026-11-27T11:00:01+01:00"}, ["disk full on /var"]),
    ({"since": "1795773602", "until": "1795773604000"}, ["cache hit ratio 100%", "user 42 signed in"]),
    # q: a substring, case-insensitive for ASCII letters only, wildcards taken literally.
    ({"q": "DISK"}, ["Disk almost full", "disk full on /var"]),
    ({"q": "ratio 100"}, ["cache hit ratio 1000", "cache hit ratio 100%"]),
    ({"q": "100%"}, ["cache hit ratio 100%"]),
    ({"q": "a_b"}, ["Über-Fehler in a_b"]),
    ({"q": "über"}, ["über-fehler in axb"]),
    ({"q": "FEHLER"}, ["über-fehler in axb", "Über-Fehler in a_b"]),
    # Metadata: a number matches the number (42 and 42.0 alike) and the string; nothing else.
    ({"meta.user_id": "42"}, ["user 42 signed in", "Disk almost full"]),
    ({"meta.user_id": "42.5"}, ["über-fehler in axb"]),
    ({"meta.http.status": "500"}, ["Über-Fehler in a_b", "cache hit ratio 1000", "disk full on /var"]),
    ({"meta.http.status": "500", "level": "ERROR"}, ["disk full on /var"]),
    ({"meta.ok": "1"}, ["cache hit ratio 1000"]),
    ({"meta.ok": "true"}, []),
    ({"meta.host": ["a", "b"]}, ["Disk almost full", "disk full on /var"]),
    ({"meta.nested.user_id": "42", "meta.user_id": "42.5"}, ["über-fehler in axb"]),
    ({"meta.a": "1"}, []),
    ({"meta.http": "500"}, []),
    ({"q": "cache", "min_level": "DEBUG", "since": "2026-11-27T10:00:04Z", "meta.ok": "1"}, ["cache hit ratio 1000"]),
])
def test_filters(client, read_key, samples, params, expected):
    assert messages(get(client, read_key, **params)) == expected


@pytest.mark.parametrize("params, named", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": ["1", "2"]}, "limit"), ({"order": "up"}, "order"), ({"level": "loud"}, "level"),
    ({"level": "ERROR,"}, "level"), ({"min_level": "x"}, "min_level"), ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"), ({"q": "x" * 1001}, "q"), ({"cursor": "garbage"}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b'["x", 1, "desc"]').decode()}, "cursor"),
    ({"meta.": "1"}, "meta."), ({"meta.a..b": "1"}, "meta.a..b"), ({"meta.a\"b": "1"}, "meta.a\"b"),
    ({"meta.a\x00b": "1"}, "'meta.a\\x00b'"),
    ({"meta.k%d" % n: "1" for n in range(100)}, "meta.*"), ({"meta.host": ["a"] * 101}, "meta.host"),
    ({"level": ["ERROR,WARN"] * 51}, "level"), ({"meta.a" + ".a" * 250: "1"}, "meta.a.a"),
    ({"levle": "ERROR"}, "levle"),
])
def test_bad_parameters_are_400_naming_the_parameter(client, read_key, params, named):
    response = get(client, read_key, **params)
    assert response.status_code == 400 and named in response.json["error"], response.json


def test_a_cursor_of_the_other_order_is_400(client, read_key, samples):
    cursor = get(client, read_key, limit=2).json["next_cursor"]
    response = get(client, read_key, limit=2, order="asc", cursor=cursor)
    assert response.status_code == 400 and "cursor" in response.json["error"]


def test_awkward_text_in_parameters_matches_what_ingestion_stored(client, key, read_key):
    post_logs(client, key, [{"message": "a\x00b", "metadata": {"k": "x\x00"}},
                            {"message": "C:\\temp\\x", "metadata": {"k": "\\"}}])
    drain_all()
    # NUL, which no store holds, was replaced by U+FFFD on the way in; so it is in a parameter.
    assert messages(get(client, read_key, q="a\x00b")) == ["a\ufffdb"]
    assert messages(get(client, read_key, **{"meta.k": "x\x00"})) == ["a\ufffdb"]
    assert messages(get(client, read_key, q="\\temp\\")) == ["C:\\temp\\x"]
    assert messages(get(client, read_key, **{"meta.k": "\\"})) == ["C:\\temp\\x"]


def test_one_log_by_id_in_any_uuid_spelling(client, read_key, samples):
    log = get(client, read_key, limit=1).json["logs"][0]
    canonical = uuid.UUID(log["id"])
    for spelling in (log["id"], log["id"].upper(), canonical.hex, "{%s}" % log["id"], canonical.urn):
        response = get(client, read_key, "/logs/" + spelling)
        assert response.status_code == 200 and response.json == log
    unknown = get(client, read_key, "/logs/" + str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json["error"]
    bad = get(client, read_key, "/logs/not-a-uuid")
    assert bad.status_code == 400 and "id" in bad.json["error"]


def record(number, timestamp):
    return {"message": "m%04d" % number, "timestamp": timestamp}


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_walking_every_page_while_logs_arrive_repeats_nothing_and_skips_nothing(client, key, read_key, order):
    # Ties on the timestamp are broken by id, so three records share each second.
    start = datetime.datetime(2026, 11, 27, 10, 0, 0)
    stamps = [(start + datetime.timedelta(seconds=n // 3)).isoformat() + "Z" for n in range(150)]
    post_logs(client, key, [record(n, stamp) for n, stamp in enumerate(stamps)])
    drain_all()
    before = messages(get(client, read_key, limit=1000, order=order))
    walked, cursor, arrivals = [], None, 1000
    while True:
        params = {"limit": 7, "order": order}
        if cursor:
            params["cursor"] = cursor
        response = get(client, read_key, **params)
        walked.extend(messages(response))
        # Between pages: newer, older and equal timestamps (the cursor's own among them) arrive.
        page_stamp = response.json["logs"][-1]["timestamp"] if response.json["logs"] else stamps[0]
        late = [record(arrivals, page_stamp), record(arrivals + 1, stamps[0]),
                record(arrivals + 2, "2027-01-01T00:00:00Z"), record(arrivals + 3, stamps[75])]
        arrivals += len(late)
        post_logs(client, key, late)
        drain_all()
        cursor = response.json["next_cursor"]
        if cursor is None:
            break
    assert len(walked) == len(set(walked)), "a log was returned twice"
    assert [log for log in walked if log in before] == before, "a log that existed was skipped"


def test_a_database_outage_is_503(bound, read_key):
    client = create_app(bound).test_client()
    assert get(client, read_key).status_code == 200  # the key lookup is cached and shared
    models.database.initialize(peewee.PostgresqlDatabase("none", host="127.0.0.1", port=1)
                               if bound.database_url else
                               peewee.SqliteDatabase("/nonexistent/folder/logflow.db"))
    try:
        response = get(client, read_key)
    finally:
        models.bind_database(bound)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json == {"error": "the database is unavailable; retry later"}


def test_the_most_filters_a_read_may_carry_are_answered(client, read_key, samples):
    cursor = get(client, read_key, order="asc", limit=1).json["next_cursor"]
    params = {"meta.k%d" % n: ["1", "x"] for n in range(query.MAX_METADATA_FILTERS - 1)}
    params["meta." + ".".join(["a"] * records.MAX_DEPTH)] = [str(n) for n in range(query.MAX_VALUES)]
    params.update(level=["WARN"] * query.MAX_VALUES, min_level="DEBUG", since="2026-01-01T00:00:00Z",
                  until="2027-01-01T00:00:00Z", q="disk", limit=10, order="asc", cursor=cursor)
    assert messages(get(client, read_key, **params)) == []


def test_only_connection_trouble_counts_as_the_database_being_unreachable(bound):
    nowhere = (peewee.PostgresqlDatabase("none", host="127.0.0.1", port=1) if bound.database_url else
               peewee.SqliteDatabase("/nonexistent/folder/logflow.db"))
    with pytest.raises(peewee.OperationalError) as down:
        nowhere.connect()
    assert query.unreachable(down.value)
    # Errors of a statement the database refused: a timeout on PostgreSQL, SQLite's parser stack overflow.
    statement = ("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)" if bound.database_url else
                 "SELECT " + "(" * 1000 + "1" + ")" * 1000)
    with models.database.connection_context(), pytest.raises(peewee.OperationalError) as refused:
        with models.database.atomic():
            models.database.execute_sql(statement)
    assert not query.unreachable(refused.value)


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_read_runs_without_jit_and_with_its_timeout_only_inside_its_transaction(bound):
    def shown(name):
        return models.database.execute_sql("SHOW %s" % name).fetchone()[0]
    with models.database.connection_context():
        before = shown("statement_timeout"), shown("jit")
        with query.time_limited(2.5):
            assert (shown("statement_timeout"), shown("jit")) == ("2500ms", "off")
        with query.time_limited(0):  # no limit of its own: the server's stays
            assert (shown("statement_timeout"), shown("jit")) == (before[0], "off")
        assert (shown("statement_timeout"), shown("jit")) == before


def test_a_read_the_database_refuses_is_logged_with_the_request_not_called_an_outage(
        client, read_key, bound, monkeypatch, caplog):
    # Past the cap, SQLite's parser overflows (PostgreSQL's goes deeper): the database is up.
    monkeypatch.setattr(query, "MAX_METADATA_FILTERS", 1000)
    response = get(client, read_key, **{"meta.k%d" % n: "1" for n in range(100)})
    if bound.database_url:
        assert messages(response) == []
    else:
        assert response.status_code == 500 and "Retry-After" not in response.headers
        assert "parser stack overflow" in caplog.text and "while reading /logs?meta.k0=1" in caplog.text


def test_a_read_past_the_time_limit_is_cancelled_and_answered_422(bound, read_key):
    if not bound.database_url:
        pytest.skip("dev mode's SQLite runs without a statement timeout")
    client = create_app(bound.replace(read_timeout_seconds=0.2)).test_client()
    # A lock held elsewhere keeps the read waiting, as a long scan would keep it running.
    blocker = psycopg2.connect(bound.database_url)
    blocker.cursor().execute("LOCK TABLE logs IN ACCESS EXCLUSIVE MODE")
    # Without the limit the read would wait for the lock: release it in time to fail, not hang.
    release = threading.Timer(10, blocker.rollback)
    release.start()
    try:
        started = time.monotonic()
        response = get(client, read_key, q="disk")
        waited = time.monotonic() - started
    finally:
        release.cancel()
        blocker.close()
    assert response.status_code == 422 and "since and until" in response.json["error"], response.json
    assert "Retry-After" not in response.headers and waited < 5
    assert get(client, read_key).status_code == 200
    assert 'logflow_requests_refused_total{reason="read_timeout"} 1.0' in client.get("/metrics").get_data(True)


def test_reads_leave_sqlite_writers_alone(bound, client, read_key):
    if bound.database_url:
        pytest.skip("PostgreSQL reads never block its writers")
    # The consumer's writer holds SQLite's write lock (BEGIN IMMEDIATE); a read
    # must not wait for it, nor take it: WAL lets both run at once.
    writer = sqlite3.connect(bound.sqlite_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert get(client, read_key).status_code == 200
        assert client.get("/logs/0e3a6a3c-5b7e-4c1b-9e3c-2d6b1a0f9c11",
                          headers={"X-API-Key": read_key}).status_code == 404
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_lookups_shared_before_keys_had_scopes_are_ingest_keys(bound, key):
    key_hash = models.hash_key(key)
    tasks.runtime.spool.remember(key_hash, orjson.dumps([1, True, ["db"], None]), 60)
    # Epoch 0 is the memo name lookups had before key epochs (c3ee69c).
    assert KeyCache.recall(key_hash, 0) == (1, True, ("db",), None, "ingest", None)


def store_directly(project_ids, count):
    """count records per project, written as the consumer writes them, spread over days."""
    start = datetime.datetime(2026, 1, 1)
    items = [(project_id, "2026-11-27T10:00:00.000000Z",
              {"id": str(uuid.uuid4()), "level": ("INFO", "DEBUG", "WARN", "ERROR")[n % 4],
               "message": "m%d" % n, "metadata": {"n": n},
               "timestamp": (start + datetime.timedelta(seconds=37 * n)).isoformat(timespec="microseconds") + "Z"})
             for project_id in project_ids for n in range(count)]
    storage.DatabaseWriter().write(items)


@pytest.mark.parametrize("params", [{}, {"level": "ERROR"}, {"min_level": "WARN"}])
def test_the_newest_logs_of_a_project_come_from_the_index(bound, project, params):
    with models.database.connection_context():
        other = Project.create(name="other")
    store_directly([project.id, other.id], 5000)
    log_filter = query.parse_filter(params.items())
    with models.database.connection_context():
        models.database.execute_sql("ANALYZE")
        # The page's first query: keys and sizes of its rows.
        sql, values = query.select_keys(project.id, log_filter).sql()
        if bound.database_url:
            plan = "\n".join(row[0] for row in models.database.execute_sql("EXPLAIN " + sql, values))
            assert "Index Scan Backward using log_project_id_timestamp_id" in plan, plan
            assert "Sort" not in plan and "Seq Scan" not in plan, plan
        else:
            plan = "\n".join(row[-1] for row in models.database.execute_sql("EXPLAIN QUERY PLAN " + sql, values))
            assert "USING INDEX log_project_id_timestamp_id (project_id=?)" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
        rows = list(query.select_logs(project.id, log_filter))
    assert len(rows) == 101 and all(row.project_id == project.id for row in rows)


MIB = 1024 * 1024


def label(message):
    """The name a test gave a log: its message up to the first space (the rest is padding)."""
    return message.split(" ", 1)[0]


def walk_pages(client, read_key, **params):
    """The labels of every page of a walk with these parameters, following next_cursor until it is null."""
    pages, cursor = [], None
    while True:
        response = get(client, read_key, **params, **({"cursor": cursor} if cursor else {}))
        pages.append([label(message) for message in messages(response)])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the walk does not end"


def sized_record(name, length, second):
    """A record whose message is name padded to length bytes, metadata {}, timestamped at 10:00:<second>."""
    return {"message": (name + " ").ljust(length, "x"), "timestamp": "2026-11-27T10:00:%02dZ" % second}


@pytest.mark.parametrize("order, limit, expected", [
    ("asc", 1000, [["m0", "m1", "m2"], ["m3", "m4"], ["big"], ["m6", "m7", "m8"], ["m9"]]),
    ("desc", 1000, [["m9", "m8", "m7"], ["m6"], ["big"], ["m4", "m3", "m2"], ["m1", "m0"]]),
    # Where three logs would fit, limit ends the page first.
    ("asc", 2, [["m0", "m1"], ["m2", "m3"], ["m4"], ["big"], ["m6", "m7"], ["m8", "m9"]]),
])
def test_a_page_stops_before_the_log_that_would_take_it_past_max_page_bytes(bound, key, read_key, order, limit,
                                                                            expected):
    # Each log weighs its message, its metadata's JSON text ("{}") and query.LOG_BYTES for the rest.
    size = 1000 + len("{}") + query.LOG_BYTES
    client = create_app(bound.replace(max_page_bytes=3 * size + size // 2)).test_client()
    body = [sized_record("big", 5 * size, n) if n == 5 else sized_record("m%d" % n, 1000, n) for n in range(10)]
    assert post_logs(client, key, body).status_code == 202
    drain_all()
    # Every page but the last has a cursor, and the walk returns each log once, in order.
    assert walk_pages(client, read_key, order=order, limit=limit) == expected


# Message sizes in MiB: bigger than a record may be today, as older versions stored them.
LARGE = [1.5, 1.5, 1.5, 5, 1.5, 1.5, 1.5]


@pytest.fixture
def large_logs(bound, project):
    """Logs of LARGE sizes written straight into the table, a second apart; their labels, oldest first."""
    start = datetime.datetime(2026, 11, 27, 10)
    rows = [{"id": uuid.uuid4(), "project": project.id, "level": "INFO",
             "message": ("L%d " % n).ljust(int(mib * MIB), "x"), "metadata": {"n": n},
             # With microseconds, as the writer stores times on SQLite (text that compares in order).
             "timestamp": start + datetime.timedelta(seconds=n, microseconds=500), "received_at": start}
            for n, mib in enumerate(LARGE)]
    with models.database.connection_context():
        for row in rows:
            models.Log.insert(row).execute()
    return ["L%d" % n for n in range(len(LARGE))]


@pytest.mark.parametrize("order, expected", [
    ("asc", [["L0", "L1"], ["L2"], ["L3"], ["L4", "L5"], ["L6"]]),
    ("desc", [["L6", "L5"], ["L4"], ["L3"], ["L2", "L1"], ["L0"]]),
])
def test_logs_stored_larger_than_today_allows_come_in_pages_of_at_most_4_mib(client, read_key, large_logs,
                                                                             order, expected):
    # Two of 1.5 MiB fit the default 4 MiB; a third would not; the 5 MiB log comes alone.
    assert walk_pages(client, read_key, order=order) == expected


def test_tail_reads_pages_within_max_bytes_and_fetches_only_what_fits(bound, project, large_logs, caplog):
    everything, floor = query.parse_filter([]), datetime.datetime(2026, 1, 1)
    with models.database.connection_context():
        assert [[label(log.message) for log in rows] for rows in query.pages(project.id, everything)] == [
            ["L0", "L1"], ["L2"], ["L3"], ["L4", "L5"], ["L6"]]
        assert [label(log.message) for log in query.logs_from(project.id, everything, floor)] == large_logs
        newest, _ = query.fetch(project.id, everything.replace(limit=20))
        assert [label(log.message) for log in newest] == ["L6", "L5"]
        seen, shown, statements = {}, [], []
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            for log in query.logs_since(project.id, everything, floor, seen):
                shown.append(label(log.message))
                # Peewee logs each statement as (sql, params); only those fetching whole rows name received_at.
                statements.append(sum(isinstance(record.msg, tuple) and "received_at" in record.msg[0]
                                      for record in caplog.records))
    assert shown == large_logs and len(seen) == len(large_logs)
    # Logs yielded after the same statement came from it: whole rows were fetched at most two at a time.
    assert sorted(collections.Counter(statements).values()) == [1, 1, 1, 2, 2], statements


def test_gunicorn_serves_pages_of_logs_of_several_mb_each_within_200_mb(tmp_path, postgres_server, redis_server):
    service = make_service(tmp_path, postgres_server.create_database(unique_database_name("pages")),
                           redis_server.url)
    try:
        # 20 logs of 6 MB (message and metadata), as a version without LOGFLOW_MAX_RECORD_BYTES stored them.
        with psycopg2.connect(service.db_url) as connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO logs (id, project_id, level, message, metadata, timestamp, received_at)"
                " SELECT gen_random_uuid(), projects.id, 'INFO', 'L' || n || ' ' || repeat('x', 3000000),"
                "        jsonb_build_object('blob', repeat('y', 3000000)),"
                "        timestamp '2026-11-27 10:00:00' + n * interval '1 second', timestamp '2026-11-27 10:00:00'"
                " FROM projects, generate_series(1, 20) AS n")
        created = subprocess.run([sys.executable, "manage.py", "create-key", "e2e", "--scope", "read"],
                                 cwd=ROOT, env=service.env, check=True, capture_output=True, text=True)
        read_key = created.stdout.strip()
        web = service.start_web()
        walked, cursor, slowest = [], None, 0.0
        while True:
            url = service.base_url + "/logs?limit=1000" + ("&cursor=" + cursor if cursor else "")
            started = time.monotonic()
            with urllib.request.urlopen(urllib.request.Request(url, headers={"X-API-Key": read_key}),
                                        timeout=60) as response:
                page = orjson.loads(response.read())
            slowest = max(slowest, time.monotonic() - started)
            walked.append([label(log["message"]) for log in page["logs"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(walked) < 100, "the walk does not end"
        peaks = {}
        for pid in child_pids(web.pid):
            with open("/proc/%d/status" % pid) as status:
                peaks[pid] = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    finally:
        service.close()
    print("\n20 pages of one 6 MB log: slowest %.2f s; workers' peak RSS %s KiB" % (slowest, sorted(peaks.values())))
    assert peaks and max(peaks.values()) < 200 * 1024, "peak RSS of the workers (KiB): %s" % peaks
    assert slowest < 20, "a page took %.1f s" % slowest
    # Newest first, one 6 MB log per 4 MiB page, each once.
    assert walked == [["L%d" % n] for n in range(20, 0, -1)]
