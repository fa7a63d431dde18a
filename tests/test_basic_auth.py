"""HTTP Basic with the key as the password, on every route that takes a key; the key never in LogFlow's logs."""
import base64
import json
import logging
import subprocess
import uuid

import pytest

import models
from helpers import drain_all, file_records, post_logs, stored_logs, wait_for
from processes import make_service, query, unique_database_name
# live_url: the test's app over real HTTP.
from test_drains import LOGPLEX, ROUTER_ERROR_LINE, frame, live_url, logplex_headers  # noqa: F401

CHALLENGE = 'Basic realm="LogFlow"'


def basic(password, user="logflow"):
    return {"Authorization": "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()}


def curl(*arguments):
    """Run curl; returns (status, headers as lower-case name -> value, body)."""
    done = subprocess.run(["curl", "-sS", "--max-time", "15", "-D", "-", *arguments],
                          capture_output=True, text=True, check=True)
    # text=True reads curl's CRLFs as newlines.
    head, _, body = done.stdout.partition("\n\n")
    lines = head.splitlines()
    headers = dict((name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("user", ["", "logflow"])
def test_curl_sends_and_reads_with_the_key_as_its_password(live_url, key, read_key, project, bound, user):
    record_id = str(uuid.uuid4())
    status, _, body = curl("-u", "%s:%s" % (user, key), "-H", "Content-Type: application/json", "-d",
                           json.dumps({"id": record_id, "message": "sent with -u", "level": "warn",
                                       "timestamp": "2026-11-26T10:00:00Z"}),
                           live_url + "/logs")
    assert (status, json.loads(body)) == (202, {"accepted": 1, "rejected": 0, "errors": []})
    # A drain added as https://user:KEY@host/logs: curl, as Logplex, turns the URL's user part into Basic.
    status, _, body = curl("-H", "Content-Type: " + LOGPLEX, *sum((["-H", "%s: %s" % pair] for pair in
                                                                  logplex_headers(1).items()), []),
                           "--data-binary", frame(ROUTER_ERROR_LINE),
                           live_url.replace("http://", "http://%s:%s@" % (user, key)) + "/logs")
    assert (status, json.loads(body)["accepted"]) == (202, 1)
    drain_all()
    rows = stored_logs(project.id)
    assert [(row["level"], row["message"]) for row in rows] == [
        ("WARN", "sent with -u"), ("INFO", ROUTER_ERROR_LINE.split(" - ", 1)[1])]
    assert rows[0]["id"] == record_id and rows[1]["metadata"]["status"] == 503
    assert sorted(line["id"] for line in file_records(bound.log_dir, project.id)) == sorted(row["id"] for row in rows)

    status, _, body = curl("-u", "%s:%s" % (user, read_key), live_url + "/logs?meta.status=503")
    assert status == 200 and [log["message"] for log in json.loads(body)["logs"]] == [rows[1]["message"]]
    status, _, body = curl("-u", "%s:%s" % (user, read_key), live_url + "/logs/" + record_id)
    assert status == 200 and json.loads(body)["message"] == "sent with -u"


def test_curl_without_the_key_is_asked_for_basic(live_url, key):
    for arguments in ([], ["-u", "logflow:lf_wrong"], ["-u", key + ":"]):
        status, headers, body = curl(*arguments, "-d", '{"message": "x"}', live_url + "/logs")
        assert (status, headers["www-authenticate"]) == (401, CHALLENGE), body
        assert key not in body


# Every route that takes a key, with the scope it needs and what it answers.
ROUTES = [
    ("post", "/logs", "ingest", 202), ("post", "/v1/logs", "ingest", 200),
    ("get", "/logs", "read", 200), ("get", "/logs/{id}", "read", 200), ("get", "/logs/{id}/context", "read", 200),
    ("get", "/logs/histogram", "read", 200), ("get", "/logs/live", "read", 200),
    ("get", "/searches", "read", 200), ("post", "/searches", "read", 201), ("delete", "/searches/kept", "read", 204),
]


@pytest.mark.parametrize("method, path, scope, status", ROUTES, ids=["%s %s" % route[:2] for route in ROUTES])
def test_every_route_that_takes_a_key_takes_it_as_basic(client, key, read_key, method, path, scope, status):
    record_id = str(uuid.uuid4())
    post_logs(client, key, {"id": record_id, "message": "stored"})
    drain_all()
    url = path.replace("{id}", record_id)
    body = {"/logs": {"message": "m"}, "/v1/logs": {"resourceLogs": []}}.get(path)
    for user in ("", "logflow", "someone else"):
        # Saved searches change with each call: one to delete, a new name to save.
        client.post("/searches", json={"name": "kept", "query": "level=ERROR"}, headers={"X-API-Key": read_key})
        if path == "/searches":
            body = {"name": "new by %r" % user, "query": ""}
        response = getattr(client, method)(url, headers=basic(key if scope == "ingest" else read_key, user), json=body)
        assert response.status_code == status, (user, response.get_data())
    for headers in ({}, basic("lf_" + "x" * 43), basic(""), {"Authorization": "Basic not base64!"},
                    {"Authorization": "Basic " + base64.b64encode(b"logflow:\xff").decode()},
                    {"Authorization": "Basic " + base64.b64encode(b"no colon").decode()}):
        response = getattr(client, method)(url, headers=headers, json=body)
        assert response.status_code == 401, (headers, response.get_data())
        assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_basic_after_x_api_key_and_the_scope_still_counts(client, key, read_key):
    # X-API-Key wins over Authorization, as it wins over Bearer.
    assert post_logs(client, key, {"message": "x"}, headers=basic("lf_wrong")).status_code == 202
    response = post_logs(client, None, {"message": "x"}, headers=basic(read_key))
    assert response.status_code == 403 and "scope is read" in response.json["error"]
    assert client.get("/logs", headers=basic(key)).status_code == 403


def test_a_person_in_the_viewer_is_not_asked_for_basic(client, project):
    """A signed-out viewer's read is a 401 without the challenge: a browser would otherwise open its password box."""
    response = client.get("/logs", query_string={"project": "acme"})
    assert response.status_code == 401 and "WWW-Authenticate" not in response.headers


def secrets_of(key):
    """The key as every header may carry it."""
    return [key] + [base64.b64encode(("%s:%s" % (user, key)).encode()).decode() for user in ("", "logflow")]


def test_the_key_is_never_in_logflows_log(client, key, read_key, project, caplog):
    caplog.set_level(logging.DEBUG)
    with models.database.connection_context():
        revoked = models.ApiKey.issue(project)
    body = frame(ROUTER_ERROR_LINE) * 2
    for secret in (key, read_key, revoked, "lf_" + "y" * 43):
        for headers in (basic(secret), basic(secret, ""), {"Authorization": "Bearer " + secret},
                        {"X-API-Key": secret}):
            post_logs(client, None, {"message": "m"}, headers=headers)
            # A Logplex count that disagrees is logged: with the project, not the key.
            post_logs(client, None, body, headers=dict(headers, **logplex_headers(3)), content_type=LOGPLEX)
            client.get("/logs", headers=headers)
            client.get("/logs/not-a-uuid", headers=headers)
        if secret == revoked:
            with models.database.connection_context():
                models.ApiKey.update(revoked_at=models.utcnow()).where(models.ApiKey.project == project).execute()
    drain_all()
    assert "Logplex-Msg-Count is 3" in caplog.text  # the log was written, and is the one searched
    for secret in (key, read_key, revoked):
        for text in secrets_of(secret):
            assert text not in caplog.text


def test_the_key_is_never_in_gunicorns_or_the_consumers_output(tmp_path, postgres_server, redis_server):
    """The processes as the Procfile runs them, logging all they can: access log, debug level."""
    service = make_service(tmp_path, postgres_server.create_database(unique_database_name()), redis_server.url,
                           LOGFLOW_LOG_LEVEL="DEBUG")
    try:
        web = service.start_web("--access-logfile", "-", "--log-level", "debug")
        consumer = service.start_consumer()
        url = service.base_url + "/logs"
        for user in ("", "logflow"):
            status, _, _ = curl("-u", "%s:%s" % (user, service.key), "-H", "Content-Type: " + LOGPLEX,
                                *sum((["-H", "%s: %s" % pair] for pair in logplex_headers(2).items()), []),
                                "--data-binary", frame(ROUTER_ERROR_LINE), url)
            assert status == 202
            assert curl("-u", "%s:%s" % (user, service.key + "x"), "-d", '{"message": "m"}', url)[0] == 401
        assert curl("-H", "Authorization: Bearer " + service.key, "-d", '{"message": "bearer"}', url)[0] == 202
        assert curl("-u", ":" + service.key, service.base_url + "/logs")[0] == 403  # an ingest key cannot read
        wait_for(lambda: service.db_count() == 2, message="the records in PostgreSQL")
        # The same frame in the same place of a request with the same frame id: stored once.
        assert sorted(row[0] for row in query(service.db_url, "SELECT message FROM logs")) == [
            ROUTER_ERROR_LINE.split(" - ", 1)[1], "bearer"]
        wait_for(lambda: service.file_line_count() == 3, message="the lines in the daily files")
    finally:
        service.close()
    output = web.text() + consumer.text()
    assert "POST /logs" in output and "Logplex-Msg-Count is 2" in output  # the access log and the warning
    for text in secrets_of(service.key):
        assert text not in output
