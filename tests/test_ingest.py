"""POST /logs on both backends: the contract, checked against what was stored."""
import gzip
import logging
import pathlib
import uuid
import zlib

import orjson
import peewee
import pytest

import models
import spool
import tasks
from helpers import break_spool, drain_all, file_records, post_logs, stored_logs
from logflow import create_app


def test_single_record_reaches_database_and_file(client, key, project, bound):
    record_id = str(uuid.uuid4())
    response = post_logs(client, key, {"id": record_id, "message": "hello", "level": "warning",
                                       "timestamp": "2026-11-27T10:00:00Z", "user": "ann"})
    assert response.status_code == 202
    assert response.json == {"accepted": 1, "rejected": 0, "errors": []}
    assert stored_logs() == []  # nothing is written before a consumer drains
    drain_all()
    [row] = stored_logs(project.id)
    assert row["id"] == record_id and row["level"] == "WARN" and row["message"] == "hello"
    assert row["metadata"] == {"user": "ann"}
    assert row["timestamp"].isoformat() == "2026-11-27T10:00:00"
    [line] = file_records(bound.log_dir, project.id)
    assert line["id"] == record_id and line["timestamp"] == "2026-11-27T10:00:00.000000Z"
    assert (line["level"], line["message"], line["metadata"]) == ("WARN", "hello", {"user": "ann"})


def test_daily_files_follow_each_record_utc_date(client, key, project, bound):
    post_logs(client, key, [{"message": "late", "timestamp": "2026-11-26T23:30:00-01:00"},
                            {"message": "early", "timestamp": "2026-11-27T00:30:00+02:00"}])
    drain_all()
    assert [r["message"] for r in file_records(bound.log_dir, project.id)] == ["early", "late"]
    folder = pathlib.Path(bound.log_dir, str(project.id))
    assert sorted(path.name for path in folder.iterdir()) == ["2026-11-26.log", "2026-11-27.log"]


def test_partial_success_reports_rejected_records_by_index(client, key, project):
    response = post_logs(client, key, [{"message": "ok"}, {"level": "info"}, {"message": "x", "level": "loud"}])
    assert response.status_code == 202
    assert response.json["accepted"] == 1 and response.json["rejected"] == 2
    assert [e["index"] for e in response.json["errors"]] == [1, 2]
    drain_all()
    assert [r["message"] for r in stored_logs()] == ["ok"]


def test_no_valid_record_is_422_and_nothing_is_queued(client, key, bound):
    response = post_logs(client, key, [{"level": "info"}, 42])
    assert response.status_code == 422
    assert response.json["rejected"] == 2 and response.json["error"]
    drain_all()
    assert stored_logs() == [] and file_records(bound.log_dir) == []


def test_deep_metadata_is_stored_or_refused_by_record_never_a_500(client, key, bound):
    """Around the depth limit (250 levels; orjson writes 255 at most), a record one level too deep for the
    spool payload's list, though fine on its own, was a 500 for the whole request."""
    for depth in range(245, 262):
        deep = b'{"message":"depth %d","metadata":' % depth + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        response = post_logs(client, key, b'[{"message":"shallow %d"},' % depth + deep + b"]")
        assert response.status_code == 202, (depth, response.status_code, response.get_data()[:200])
        summary = response.get_json()
        assert summary["accepted"] in (1, 2) and [error["index"] for error in summary["errors"]] == (
            [] if summary["accepted"] == 2 else [1]), (depth, summary)
    drain_all()
    messages = {row["message"] for row in stored_logs()}
    assert {"shallow %d" % depth for depth in range(245, 262)} <= messages
    assert len(file_records(bound.log_dir)) == len(messages)


def test_ndjson_body(client, key):
    body = b'{"msg": "a", "lvl": "debug"}\n{"@m": "b", "@l": "Error", "@t": "2026-01-01T00:00:00Z"}\n'
    assert post_logs(client, key, body, content_type="application/x-ndjson").status_code == 202
    drain_all()
    assert sorted((r["message"], r["level"]) for r in stored_logs()) == [("a", "DEBUG"), ("b", "ERROR")]


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda data: _raw_deflate(data)),
])
def test_compressed_bodies(client, key, encoding, compress):
    body = compress(orjson.dumps([{"message": "packed %d" % i} for i in range(3)]))
    response = post_logs(client, key, body, headers={"Content-Encoding": encoding})
    assert response.status_code == 202, response.json
    drain_all()
    assert len(stored_logs()) == 3


def _raw_deflate(data):
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def test_unknown_encoding_is_415(client, key):
    response = post_logs(client, key, b"{}", headers={"Content-Encoding": "br"})
    assert response.status_code == 415 and "br" in response.json["error"]


def test_gzip_bomb_is_413_and_truncated_gzip_is_400(client, key, app):
    limit = app.extensions["logflow"]["settings"].max_decoded_bytes
    bomb = gzip.compress(b"[" + b" " * (limit + 10) + b"]")
    assert len(bomb) < 100_000
    response = post_logs(client, key, bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    truncated = gzip.compress(b'{"message": "x"}')[:-10]
    assert post_logs(client, key, truncated, headers={"Content-Encoding": "gzip"}).status_code == 400


def test_limits(client, key, app):
    settings = app.extensions["logflow"]["settings"]
    too_many = [{"message": "m"}] * (settings.max_records + 1)
    assert post_logs(client, key, too_many).status_code == 413
    too_big = b'{"message": "' + b"x" * settings.max_body_bytes + b'"}'
    response = post_logs(client, key, too_big)
    assert response.status_code == 413
    assert response.json == {"error": "the body is larger than %d bytes" % settings.max_body_bytes}


@pytest.mark.parametrize("body, content_type, status", [
    (b"{not json", "application/json", 400),
    (b"", "application/json", 400),
    (b"[]", "application/json", 400),
    (b"<log/>", "application/xml", 415),
])
def test_bad_bodies(client, key, body, content_type, status):
    response = post_logs(client, key, body, content_type=content_type)
    assert response.status_code == status
    assert response.is_json and response.json["error"]


def test_auth(client, key, project, bound):
    body = {"message": "x"}
    assert post_logs(client, None, body).status_code == 401
    assert post_logs(client, "lf_wrong", body).status_code == 401
    assert post_logs(client, "é" * 10, body).status_code == 401
    assert post_logs(client, "x" * 5000, body).status_code == 401
    bearer = post_logs(client, None, body, headers={"Authorization": "Bearer " + key})
    assert bearer.status_code == 202
    with models.database.connection_context():
        models.Project.update(is_active=False).execute()
    response = post_logs(client, key, body)
    assert response.status_code == 403 and response.json == {"error": "this project is deactivated"}
    with models.database.connection_context():
        models.ApiKey.update(revoked_at=models.utcnow()).execute()
    assert post_logs(client, key, body).status_code == 401
    drain_all()
    assert len(stored_logs()) == 1


def test_key_cache_delays_revocation_by_its_ttl(bound, key):
    client = create_app(bound.replace(key_cache_seconds=3600)).test_client()
    assert post_logs(client, key, {"message": "x"}).status_code == 202
    with models.database.connection_context():
        models.ApiKey.update(revoked_at=models.utcnow()).execute()
    # Within the TTL the cached lookup answers, without the database.
    assert post_logs(client, key, {"message": "x"}).status_code == 202


def test_client_ids_make_retries_idempotent_in_the_database(client, key):
    batch = [{"id": str(uuid.uuid4()), "message": "m%d" % i} for i in range(5)]
    assert post_logs(client, key, batch).status_code == 202
    assert post_logs(client, key, batch).status_code == 202
    drain_all()
    assert len(stored_logs()) == 5


def test_the_same_id_in_two_projects_is_two_records(client, key, bound):
    with models.database.connection_context():
        other_key = models.ApiKey.issue(models.Project.create(name="other"))
    record = {"id": str(uuid.uuid4()), "message": "mine"}
    post_logs(client, key, record)
    post_logs(client, other_key, record)
    drain_all()
    assert len(stored_logs()) == 2


def test_awkward_values_are_stored_by_every_writer(client, key, project, bound):
    awkward = {"message": "nul\x00 and emoji \U0001f600", "metadata": {
        "nul\x00key": "v\x00", "big": 2 ** 63 - 1, "float": 1.5e300, "nested": {"a": [None, True, ""]},
        "unicode": "\u2028\u2029\ufeff"}}
    response = post_logs(client, key, awkward)
    assert response.status_code == 202
    assert response.json["warnings"] == [{"index": 0, "warning": "NUL characters were replaced by U+FFFD"}]
    drain_all()
    [row] = stored_logs()
    assert row["message"] == "nul\ufffd and emoji \U0001f600"
    assert row["metadata"]["nul\ufffdkey"] == "v\ufffd" and row["metadata"]["big"] == 2 ** 63 - 1
    # jsonb keeps numbers as numeric: 1.5e300 comes back as an equal integer.
    assert float(row["metadata"].pop("float")) == 1.5e300
    [line] = file_records(bound.log_dir)
    assert line["metadata"].pop("float") == 1.5e300
    assert line["metadata"] == row["metadata"]


def test_project_storage_override(client, bound):
    with models.database.connection_context():
        project = models.Project.create(name="files-only", storage="file")
        files_key = models.ApiKey.issue(project)
    assert post_logs(client, files_key, {"message": "archived"}).status_code == 202
    drain_all()
    assert stored_logs() == []
    assert [r["message"] for r in file_records(bound.log_dir, project.id)] == ["archived"]


def test_default_storage_setting(bound, key):
    client = create_app(bound.replace(storage=("db",))).test_client()
    post_logs(client, key, {"message": "db only"})
    drain_all()
    assert len(stored_logs()) == 1 and file_records(bound.log_dir) == []


def test_queue_unreachable_is_503_and_nothing_accepted(bound, key, tmp_path):
    if bound.redis_url:
        broken = bound.replace(redis_url="redis://127.0.0.1:1/0")
    else:
        (tmp_path / "blocked").write_text("a file where the data folder should be")
        broken = bound.replace(data_dir=str(tmp_path / "blocked"))
    app = create_app(broken) if bound.redis_url else _app_with_blocked_spool(bound, broken)
    response = post_logs(app.test_client(), key, {"message": "x"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "nothing was accepted" in response.json["error"]


def _app_with_blocked_spool(bound, broken):
    app = create_app(bound)
    tasks.runtime.spool = spool.open_spool(broken)
    return app


def test_errors_are_json(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").is_json
    response = client.delete("/logs")
    assert response.status_code == 405 and response.json["error"]
    assert client.get("/healthz").json == {"status": "ok"}


def test_readiness_names_what_failed(client, bound, tmp_path):
    assert client.get("/readyz").json == {"status": "ready"}
    break_spool(bound, tmp_path)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["error"] == "not ready: queue" and "queue" in response.json["failures"]


def test_keys_never_reach_logs_or_responses(client, key, project, bound, caplog):
    wrong = "lf_" + "x" * 43
    with caplog.at_level(logging.DEBUG):
        bodies = [post_logs(client, key, {"message": "ok"}).get_data(),
                  post_logs(client, wrong, {"message": "x"}).get_data(),
                  post_logs(client, key, b"{broken").get_data(),
                  post_logs(client, key, [{"level": "x"}]).get_data()]
        with models.database.connection_context():
            models.Project.update(is_active=False).execute()
        bodies.append(post_logs(client, key, {"message": "x"}).get_data())
        drain_all()
    for secret in (key, wrong):
        assert secret not in caplog.text
        assert all(secret.encode() not in body for body in bodies)


def test_a_key_writes_only_to_its_own_project(client, key, project, bound):
    with models.database.connection_context():
        other = models.Project.create(name="other")
        models.ApiKey.issue(other)
    post_logs(client, key, [{"message": "mine", "project": other.id, "project_id": other.id}])
    drain_all()
    [row] = stored_logs()
    assert row["project"] == project.id and stored_logs(other.id) == []
    assert row["metadata"] == {"project": other.id, "project_id": other.id}
    assert [line["project_id"] for line in file_records(bound.log_dir)] == [project.id]


def test_a_database_outage_keeps_known_keys_working_and_answers_503_for_others(bound, key):
    client = create_app(bound.replace(key_cache_seconds=0)).test_client()
    assert post_logs(client, key, {"message": "before"}).status_code == 202
    # The database becomes unreachable: keys cannot be looked up any more.
    models.database.initialize(peewee.PostgresqlDatabase("none", host="127.0.0.1", port=1)
                               if bound.database_url else
                               peewee.SqliteDatabase("/nonexistent/folder/logflow.db"))
    response = post_logs(client, key, {"message": "during"})
    assert response.status_code == 202  # the expired cached lookup still serves
    unknown = post_logs(client, "lf_" + "y" * 43, {"message": "x"})
    assert unknown.status_code == 503 and unknown.headers["Retry-After"] == "5"
    assert "database is unavailable" in unknown.json["error"]
    # Another web process, which never looked the key up itself, trusts what the first one shared.
    other = create_app(bound.replace(key_cache_seconds=0)).test_client()
    models.database.initialize(peewee.PostgresqlDatabase("none", host="127.0.0.1", port=1)
                               if bound.database_url else
                               peewee.SqliteDatabase("/nonexistent/folder/logflow.db"))
    assert post_logs(other, key, {"message": "elsewhere"}).status_code == 202
    models.bind_database(bound)
    drain_all()
    assert sorted(r["message"] for r in stored_logs()) == ["before", "during", "elsewhere"]
