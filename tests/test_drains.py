"""POST /logs with the bodies platforms and the standard library send: Logplex drains and Python's HTTPHandler."""
import datetime
import io
import logging
import logging.handlers
import tracemalloc
import urllib.parse
import uuid

import pytest

import config
import drains
import records
from helpers import drain_all, file_records, post_logs, serve, stored_logs
from logflow import create_app

LOGPLEX = "application/logplex-1"
FORM = "application/x-www-form-urlencoded"
DRAIN_TOKEN = "d.fc6b856b-3332-4546-93de-7d0ee272c3bd"

# The body of Logplex's own documentation (heroku/logplex, doc/README.http_drains.md), ten
# frames, byte for byte: its Content-Length is 730.
LOGPLEX_README_BODY = b"70 <174>1 2012-07-22T00:06:26+00:00 host erlang console - Hi from erlang\n" * 10
# Heroku Dev Center's example of an HTTPS drain's body (Log Drains, "HTTPS drains").
DEV_CENTER_BODY = (b"83 <40>1 2012-11-30T06:45:29+00:00 host app web.3 - State changed from starting to up\n"
                   b"119 <40>1 2012-11-30T06:45:26+00:00 host app web.3 - Starting process with command"
                   b" `bundle exec rackup config.ru -p 24405`\n")

# Lines of one request to a Heroku app as Logplex drains them: the app's, the platform's and the router's.
APP_LINE = "<190>1 2026-11-27T10:00:01.000123+00:00 host app web.1 - Processing PostController#list [GET]"
PLATFORM_LINE = "<45>1 2026-11-27T10:00:00+00:00 host heroku web.1 - State changed from starting to up"
ROUTER_LINE = ('<158>1 2026-11-27T10:00:01.018000+00:00 host heroku router - at=info method=GET path="/posts"'
               ' host=myapp.herokuapp.com request_id=5f0a1d44-3c1b-4a2e-9d0e-0c6a7d9f1b21 fwd="204.204.204.204"'
               ' dyno=web.1 connect=1ms service=18ms status=200 bytes=975 protocol=https')
ROUTER_ERROR_LINE = ('<158>1 2026-11-27T10:00:31+00:00 host heroku router - at=error code=H12 desc="Request timeout"'
                     ' method=GET path="/slow" host=myapp.herokuapp.com request_id=8601b555-6a83-4c12-8269-97c8e32cdb22'
                     ' fwd="204.204.204.204" dyno=web.1 connect=0ms service=30000ms status=503 bytes=0 protocol=https')
# RFC 5424's own example with structured data (6.5, example 3): two elements, then a BOM and the message.
STRUCTURED_LINE = ('<165>1 2026-11-27T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3"'
                   ' eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'
                   ' \ufeffAn application event log entry...')


def frame(line):
    """One syslog line as Logplex frames it: its length in bytes, a space, the line and its newline."""
    data = line.encode() + b"\n"
    return b"%d %s" % (len(data), data)


def logplex_headers(count, frame_id="09C557EAFCFB6CF2740EE62F62971098", token=DRAIN_TOKEN):
    """The headers Logplex sends with a batch (doc/README.http_drains.md)."""
    return {"Logplex-Msg-Count": str(count), "Logplex-Frame-Id": frame_id, "Logplex-Drain-Token": token,
            "User-Agent": "Logplex/v72"}


def post_logplex(client, key, body, headers):
    return post_logs(client, key, body, headers=headers, content_type=LOGPLEX)


def by_message(rows):
    return {row["message"]: row for row in rows}


def test_the_logplex_readme_body_is_ten_records(client, key, project, bound):
    assert len(LOGPLEX_README_BODY) == 730
    response = post_logplex(client, key, LOGPLEX_README_BODY, logplex_headers(10))
    assert response.status_code == 202
    assert response.json == {"accepted": 10, "rejected": 0, "errors": []}
    drain_all()
    rows = stored_logs(project.id)
    # Ten equal lines of one request are ten records: a frame's place is part of its id.
    assert len(rows) == len({row["id"] for row in rows}) == 10
    assert {(row["message"], row["level"], row["timestamp"]) for row in rows} == {
        ("Hi from erlang", "INFO", datetime.datetime(2012, 7, 22, 0, 6, 26))}
    assert {tuple(sorted(row["metadata"].items())) for row in rows} == {(
        ("app_name", "erlang"), ("drain_token", DRAIN_TOKEN), ("hostname", "host"), ("proc_id", "console"))}
    assert sorted(line["id"] for line in file_records(bound.log_dir, project.id)) == sorted(row["id"] for row in rows)


def test_a_heroku_batch_is_stored_frame_for_frame(client, key, read_key, project, bound):
    lines = [PLATFORM_LINE, APP_LINE, ROUTER_LINE, ROUTER_ERROR_LINE, STRUCTURED_LINE]
    body = DEV_CENTER_BODY + b"".join(frame(line) for line in lines)
    response = post_logplex(client, key, body, logplex_headers(7))
    assert response.status_code == 202
    assert response.json == {"accepted": 7, "rejected": 0, "errors": []}
    drain_all()
    rows = stored_logs(project.id)
    token = {"drain_token": DRAIN_TOKEN}
    web_3 = dict(hostname="host", app_name="app", proc_id="web.3", **token)
    router = dict(hostname="host", app_name="heroku", proc_id="router", **token)
    # (timestamp, level, message, metadata), oldest first; the level is the severity, PRI mod 8.
    assert [(row["timestamp"].isoformat(), row["level"], row["message"], row["metadata"]) for row in rows] == [
        ("2012-11-30T06:45:26", "CRITICAL", "Starting process with command `bundle exec rackup config.ru -p 24405`",
         web_3),
        ("2012-11-30T06:45:29", "CRITICAL", "State changed from starting to up", web_3),
        ("2026-11-27T10:00:00", "INFO", "State changed from starting to up",
         dict(hostname="host", app_name="heroku", proc_id="web.1", **token)),
        ("2026-11-27T10:00:01.000123", "INFO", "Processing PostController#list [GET]",
         dict(hostname="host", app_name="app", proc_id="web.1", **token)),
        ("2026-11-27T10:00:01.018000", "INFO", ROUTER_LINE.split(" - ", 1)[1], dict(
            router, at="info", method="GET", path="/posts", host="myapp.herokuapp.com",
            request_id="5f0a1d44-3c1b-4a2e-9d0e-0c6a7d9f1b21", fwd="204.204.204.204", dyno="web.1",
            connect="1ms", service="18ms", status=200, bytes=975, protocol="https")),
        ("2026-11-27T10:00:31", "INFO", ROUTER_ERROR_LINE.split(" - ", 1)[1], dict(
            router, at="error", code="H12", desc="Request timeout", method="GET", path="/slow",
            host="myapp.herokuapp.com", request_id="8601b555-6a83-4c12-8269-97c8e32cdb22", fwd="204.204.204.204",
            dyno="web.1", connect="0ms", service="30000ms", status=503, bytes=0, protocol="https")),
        ("2026-11-27T22:14:15.003000", "INFO", "An application event log entry...", dict(
            hostname="mymachine.example.com", app_name="evntslog", msg_id="ID47", structured_data={
                "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
                "examplePriority@32473": {"class": "high"}}, **token)),
    ]
    files = {line["id"]: line for line in file_records(bound.log_dir, project.id)}
    assert {row["id"]: (row["message"], row["metadata"]) for row in rows} == {
        line_id: (line["message"], line["metadata"]) for line_id, line in files.items()}

    def found(params):
        answer = client.get("/logs", query_string=params, headers={"X-API-Key": read_key})
        assert answer.status_code == 200, answer.json
        return [log["message"] for log in answer.json["logs"]]
    # Failing requests, one dyno, the router: the filters docs/shippers.md shows.
    assert found({"meta.status": "503"}) == [ROUTER_ERROR_LINE.split(" - ", 1)[1]]
    assert found({"meta.proc_id": "web.3"}) == ["State changed from starting to up",
                                                "Starting process with command `bundle exec rackup config.ru -p 24405`"]
    assert len(found({"meta.proc_id": "router"})) == 2 and len(found({"meta.dyno": "web.1"})) == 2


def test_a_resent_batch_is_stored_once_in_the_database(client, key, project, bound):
    body = b"".join(frame(line) for line in (APP_LINE, ROUTER_LINE, APP_LINE))
    for _ in range(2):
        # Logplex sends the batch again, as when it saw no answer to the first.
        assert post_logplex(client, key, body, logplex_headers(3)).json["accepted"] == 3
    # The same lines in another request are new lines, as is a batch without a frame id.
    assert post_logplex(client, key, body, logplex_headers(3, frame_id="A2F1C6B1F2D3E4A5B6C7D8E9F0A1B2C3")
                        ).status_code == 202
    no_frame_id = logplex_headers(3)
    del no_frame_id["Logplex-Frame-Id"]
    assert post_logplex(client, key, body, no_frame_id).status_code == 202
    drain_all()
    rows = stored_logs(project.id)
    assert sorted(row["message"] for row in rows) == sorted(["Processing PostController#list [GET]"] * 6
                                                            + [ROUTER_LINE.split(" - ", 1)[1]] * 3)
    # The files keep every copy written, as for any resent client id (docs/reliability.md): the resend's
    # three lines repeat ids of the first.
    lines = file_records(bound.log_dir, project.id)
    assert len(lines) == 12 and {line["id"] for line in lines} == {row["id"] for row in rows}
    # Content ids, led by the frame's time in milliseconds as LogFlow's own ids are.
    router_time = datetime.datetime(2026, 11, 27, 10, 0, 1, 18000)
    ids = [uuid.UUID(row["id"]) for row in rows if row["timestamp"] == router_time]
    # Two batches with frame ids, one without (a new random id, version 7).
    assert sorted(value.version for value in ids) == [7, 8, 8]
    assert {value.int >> 80 for value in ids if value.version == 8} == {
        int(router_time.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)}


def test_frames_that_are_not_syslog_are_refused_by_index(client, key, project):
    lines = [APP_LINE, "<13>Nov 27 10:00:00 host app: an RFC 3164 line", ROUTER_LINE,
             "<999>1 2026-11-27T10:00:00+00:00 host app web.1 - priority over 191",
             "<14>1 yesterday host app web.1 - a time that is not RFC 3339",
             "<14>2 2026-11-27T10:00:00+00:00 host app web.1 - version 2"]
    response = post_logplex(client, key, b"".join(frame(line) for line in lines), logplex_headers(len(lines)))
    assert response.status_code == 202
    summary = response.json
    assert (summary["accepted"], summary["rejected"]) == (2, 4)
    assert [error["index"] for error in summary["errors"]] == [1, 3, 4, 5]
    assert "not RFC 5424" in summary["errors"][0]["error"] and "191" in summary["errors"][1]["error"]
    assert "timestamp" in summary["errors"][2]["error"]
    drain_all()
    assert sorted(row["metadata"]["proc_id"] for row in stored_logs(project.id)) == ["router", "web.1"]


def test_only_frames_with_parameters_are_read_as_structured_data(client, key, project):
    lines = ["<14>1 2026-11-27T10:00:00+00:00 host app web.1 - [5f0a1d44] Started GET \"/\"",   # Rails' tag
             "<14>1 2026-11-27T10:00:01+00:00 host app web.1 - - the NILVALUE of RFC 5424",
             '<14>1 2026-11-27T10:00:02+00:00 host app web.1 - [meta a="1" a="2" b="x\\"\\]"] two a',
             "<14>1 2026-11-27T10:00:03+00:00 host app web.1 - ",
             "<14>1 2026-11-27T10:00:04+00:00 host app web.1 - user=ann tried again"]
    assert post_logplex(client, key, b"".join(map(frame, lines)), logplex_headers(5)).json["accepted"] == 5
    drain_all()
    extra = [{key: value for key, value in row["metadata"].items()
              if key not in ("hostname", "app_name", "proc_id", "drain_token")}
             for row in stored_logs(project.id)]
    assert [row["message"] for row in stored_logs(project.id)] == [
        '[5f0a1d44] Started GET "/"', "the NILVALUE of RFC 5424", "two a", "", "user=ann tried again"]
    # A line that is not wholly logfmt keeps its pairs in the message only.
    assert extra == [{}, {}, {"structured_data": {"meta": {"a": ["1", "2"], "b": 'x"]'}}}, {}, {}]


@pytest.mark.parametrize("body", [
    b'{"message": "JSON labelled as Logplex"}',
    b"<14>1 2026-11-27T10:00:00+00:00 host app web.1 - no length",
    b"083 " + frame(APP_LINE)[3:],                      # a length with a leading zero
    frame(APP_LINE)[:-1],                               # one byte short of its length
    frame(APP_LINE) + b"1000000000000 <14>1 ",          # 10^12 bytes claimed
    b"", b" \n ",
])
def test_a_body_that_is_not_octet_counted_is_400(client, key, project, body):
    response = post_logplex(client, key, body, logplex_headers(1))
    assert response.status_code == 400 and response.json["error"]
    drain_all()
    assert stored_logs(project.id) == []


def test_a_msg_count_that_disagrees_is_reported_not_refused(client, key, project):
    body = b"".join(frame(line) for line in (APP_LINE, ROUTER_LINE))
    response = post_logplex(client, key, body, logplex_headers(3))
    assert response.status_code == 202
    assert response.json["accepted"] == 2
    assert response.json["body_warning"] == (
        "Logplex-Msg-Count is 3, but the body holds 2 frames; each frame was read as a record")
    assert "body_warning" in post_logplex(client, key, body, logplex_headers("two")).json
    drain_all()
    assert len(stored_logs(project.id)) == 2  # the second request's frames were its first's: stored once


def test_logplex_limits_are_the_records_limits(bound, key, project):
    client = create_app(bound.replace(max_records=3, max_message_bytes=100)).test_client()
    too_many = b"".join(frame(APP_LINE) for _ in range(4))
    response = post_logplex(client, key, too_many, logplex_headers(4))
    assert response.status_code == 413 and "at most 3 records" in response.json["error"]
    long_line = APP_LINE.rsplit(" - ", 1)[0] + " - " + "x" * 101
    response = post_logplex(client, key, frame(APP_LINE) + frame(long_line), logplex_headers(2))
    assert response.json["errors"] == [{"index": 1, "error": "message is longer than 100 bytes"}]


def test_decoding_never_builds_more_than_the_body_holds():
    """A claimed length of 10^12 bytes, or a million frames, is refused while scanning, before anything is built."""
    limits = config.Settings()
    bodies = [b"1000000000000 <14>1 2026-11-27T10:00:00+00:00 host app web.1 - x\n",
              frame("<14>1 - - - - - x") * 200_000]
    for body in bodies:
        tracemalloc.start()
        try:
            with pytest.raises((records.InvalidBody, records.TooManyRecords)):
                drains.parse_body(body, LOGPLEX, limits, logplex_headers(1))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # The frames of a body at the limit are a list of LOGFLOW_MAX_RECORDS partials.
        assert peak < 512 * 1024, peak


def form_body(**fields):
    return urllib.parse.urlencode(fields).encode()


@pytest.mark.parametrize("fields, message, kept", [
    # logging's own cases: args as a tuple, as a mapping, none.
    ({"msg": "card %s declined for %d", "args": "('A-17', 5)"}, "card A-17 declined for 5",
     {"msg": "card %s declined for %d", "args": "('A-17', 5)"}),
    ({"msg": "%(user)s signed in", "args": "{'user': 'ann'}"}, "ann signed in",
     {"msg": "%(user)s signed in", "args": "{'user': 'ann'}"}),
    ({"msg": "100% done", "args": "()"}, "100% done", {}),
    # A formatted message wins: a Formatter ran before HTTPHandler.
    ({"message": "formatted", "msg": "raw %s", "args": "('x',)"}, "formatted", {"msg": "raw %s", "args": "('x',)"}),
    # What cannot be read as a literal, or formatted, leaves msg as it was with args beside it.
    ({"msg": "at %s", "args": "(datetime.datetime(2026, 11, 27, 10, 0),)"}, "at %s",
     {"args": "(datetime.datetime(2026, 11, 27, 10, 0),)"}),
    ({"msg": "x %s", "args": "(__import__('os').system('true'),)"}, "x %s",
     {"args": "(__import__('os').system('true'),)"}),
    ({"msg": "%d items", "args": "('many',)"}, "%d items", {"args": "('many',)"}),
    ({"msg": "%(missing)s", "args": "{'user': 'ann'}"}, "%(missing)s", {"args": "{'user': 'ann'}"}),
    ({"msg": "%999999999d", "args": "(1,)"}, "%999999999d", {"args": "(1,)"}),
    ({"msg": "%*d", "args": "(999999999, 1)"}, "%*d", {"args": "(999999999, 1)"}),
    ({"msg": "%(a)s" * 5000, "args": "{'a': '" + "x" * 1000 + "'}"}, "%(a)s" * 5000,
     {"args": "{'a': '" + "x" * 1000 + "'}"}),
    ({"msg": "deep %s", "args": "(" * 300 + ")" * 300}, "deep %s", {"args": "(" * 300 + ")" * 300}),
])
def test_a_form_record_message_is_formatted_safely(client, key, project, fields, message, kept):
    response = post_logs(client, key, form_body(**fields), content_type=FORM)
    assert response.status_code == 202, response.json
    drain_all()
    [row] = stored_logs(project.id)
    assert (row["message"], row["metadata"]) == (message, kept)


@pytest.mark.parametrize("levelname, levelno, level", [
    ("WARNING", "30", "WARN"), ("CRITICAL", "50", "CRITICAL"), ("DEBUG", "10", "DEBUG"),
    ("Level 25", "25", "INFO"), ("TRACE", "5", "DEBUG"), ("NOTICE", "25", "INFO"), ("SEVERE", "45", "ERROR"),
])
def test_a_form_record_level_is_its_levelname_else_its_levelno(client, key, project, levelname, levelno, level):
    body = form_body(msg="m", levelname=levelname, levelno=levelno, created="1795773600.5")
    assert post_logs(client, key, body, content_type=FORM).status_code == 202
    drain_all()
    [row] = stored_logs(project.id)
    assert (row["level"], row["timestamp"]) == (level, datetime.datetime(2026, 11, 27, 10, 0, 0, 500000))
    assert row["metadata"] == {"levelno": int(levelno)}


def test_json_sent_as_a_form_is_still_json(client, key, project):
    """curl -d sends application/x-www-form-urlencoded unless told otherwise."""
    for body in (b' {"message": "object"}', b'[{"message": "array"}]', b'{"message": "ndjson"}\n{"message": "two"}'):
        assert post_logs(client, key, body, content_type=FORM).status_code == 202
    response = post_logs(client, key, b"  ", content_type=FORM)
    assert response.status_code == 400 and response.json["error"] == "the request body is empty"
    drain_all()
    assert sorted(row["message"] for row in stored_logs(project.id)) == ["array", "ndjson", "object", "two"]


def test_form_records_within_the_records_limits(client, bound, key, project):
    small = create_app(bound.replace(max_record_bytes=1000)).test_client()
    response = post_logs(small, key, form_body(msg="x" * 5000), content_type=FORM)
    assert response.status_code == 422 and "as sent" in response.json["errors"][0]["error"]
    response = post_logs(client, key, b"&".join([b"a=1"] * 1000) + b"&msg=x", content_type=FORM)
    assert response.status_code == 422 and "1000 fields" in response.json["errors"][0]["error"]
    response = post_logs(client, key, form_body(levelname="INFO"), content_type=FORM)
    assert response.status_code == 422 and response.json["errors"][0]["error"] == "message is required"


@pytest.fixture
def live_url(app):
    """The test's app served over real HTTP, from a thread."""
    with serve(app) as base_url:
        yield base_url


@pytest.fixture
def python_logger():
    """A logger of its own, its handlers removed after the test."""
    logger = logging.getLogger("shop.checkout")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_the_standard_library_http_handler(live_url, key, project, bound, python_logger):
    """logging.handlers.HTTPHandler as it is, with the key as its Basic password; then after a Formatter."""
    host = live_url.removeprefix("http://")
    python_logger.addHandler(logging.handlers.HTTPHandler(
        host, "/logs", method="POST", secure=False, credentials=("logflow", key)))
    python_logger.info("user %s signed in", "ann", extra={"user_id": 42})
    python_logger.warning("%(count)d retries left", {"count": 2})
    try:
        raise ValueError("card declined")
    except ValueError:
        python_logger.exception("payment failed for order %s", "A-17")
    # A console handler first: its Formatter leaves the message and the traceback's text on the record.
    console = logging.StreamHandler(io.StringIO())
    python_logger.handlers.insert(0, console)
    try:
        raise KeyError("sku")
    except KeyError:
        python_logger.error("lookup failed", exc_info=True)
    drain_all()

    rows = by_message(stored_logs(project.id))
    assert sorted(rows) == ["2 retries left", "lookup failed", "payment failed for order A-17", "user ann signed in"]
    signed_in = rows["user ann signed in"]
    assert signed_in["level"] == "INFO"
    metadata = signed_in["metadata"]
    assert (metadata["name"], metadata["msg"], metadata["args"], metadata["user_id"]) == (
        "shop.checkout", "user %s signed in", "('ann',)", "42")
    assert (metadata["module"], metadata["funcName"], metadata["levelno"]) == (
        "test_drains", "test_the_standard_library_http_handler", 20)
    assert isinstance(metadata["lineno"], int) and isinstance(metadata["process"], int)
    assert "exc_text" not in metadata and "levelname" not in metadata and "created" not in metadata
    assert rows["2 retries left"]["level"] == "WARN"
    failed = rows["payment failed for order A-17"]
    # HTTPHandler alone formats nothing: the exception is only exc_info's repr.
    assert failed["level"] == "ERROR" and "ValueError('card declined')" in failed["metadata"]["exc_info"]
    lookup = rows["lookup failed"]["metadata"]
    assert lookup["exc_text"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'sku'" in lookup["exc_text"]
    assert "msg" not in lookup  # the formatted message is msg itself
    assert len(file_records(bound.log_dir, project.id)) == 4


def test_http_handler_times_are_its_records_times(live_url, key, project, python_logger):
    python_logger.addHandler(logging.handlers.HTTPHandler(
        live_url.removeprefix("http://"), "/logs", method="POST", credentials=("", key)))
    made = []

    class Remember(logging.Filter):
        def filter(self, record):
            made.append(record.created)
            return True
    python_logger.addFilter(Remember())
    python_logger.debug("timed")
    drain_all()
    [row] = stored_logs(project.id)
    expected = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=round(made[0] * 10**6))
    assert row["level"] == "DEBUG" and abs((row["timestamp"] - expected).total_seconds()) < 2e-6
