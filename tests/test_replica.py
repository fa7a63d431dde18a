"""Reads from a PostgreSQL streaming replica (DATABASE_READ_URL), with real servers and processes.

The module starts its own primary and a replica of it (pg_basebackup -R), both
with log_statement=all: a read is served by the replica when the replica's log
holds its statement and the primary's does not. Reads look for a lower-case
marker (q=, case-insensitive) in logs whose messages carry it capitalized, and
the database writer COPYs the messages, whose data the log does not show: the
marker in a server's log is a read's.

Run it with `python3 -m pytest -q -s tests/test_replica.py` to see the lag figures.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg2
import pytest

import alerts
import models
import services
import tasks
from conftest import base_settings, unavailable
from helpers import wait_for
from processes import ROOT, Sender, make_service, query, send, tally, unique_database_name

RETRY_AFTER_SECONDS = 3
# How long the primary stays down under load: enough for consumers to fail and back off, short for the suite.
PRIMARY_OUTAGE_SECONDS = 5


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A primary and its streaming replica, each logging every statement."""
    directory = tmp_path_factory.mktemp("replica")
    try:
        primary = services.start_postgres(str(directory / "primary"), "-c log_statement=all")
    except services.ServiceUnavailable as error:
        unavailable(error)
    replica = services.start_replica(primary, str(directory / "replica"))
    yield primary, replica
    replica.stop()
    primary.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, servers, redis_server):
    """gunicorn and a consumer on the primary, reading from the replica."""
    primary, replica = servers
    primary_url = primary.create_database(unique_database_name("replica"))
    service = make_service(tmp_path_factory.mktemp("stack"), primary_url, redis_server.url,
                           DATABASE_READ_URL=replica.replica_url(primary_url),
                           LOGFLOW_RETRY_AFTER_SECONDS=RETRY_AFTER_SECONDS,
                           LOGFLOW_RETRY_BASE_SECONDS=0.5, LOGFLOW_RETRY_MAX_SECONDS=4)
    service.web = service.start_web()
    service.consumer = service.start_consumer()
    yield primary, replica, service
    service.close()


def statements(server, text, after=0):
    """Lines of a server's log (log_statement=all) holding text, from byte `after` on (a log_size() taken before)."""
    with open(server.log_path, "rb") as log:
        log.seek(after)
        return sum(text in line for line in log.read().decode(errors="replace").splitlines())


def log_size(server):
    """Where a server's log ends now: statements(..., after=) then counts only what follows."""
    return os.path.getsize(server.log_path)


def searches_for(server, text):
    """Statements of a server's log that look for messages holding text (its ILIKE pattern: saving a search is not one)."""
    return statements(server, "%" + text + "%")


def wait_caught_up(replica, timeout=30):
    wait_for(replica.caught_up, timeout=timeout, message="the replica to replay the primary's WAL")


def get(service, path, key):
    """GET a path of the service with a key; returns (status, headers, JSON body)."""
    request = urllib.request.Request(service.base_url + path, headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def manage(service, *arguments):
    """Run manage.py with the service's environment; returns its standard output."""
    done = subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, env=service.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def post_marked(service, marker, count):
    """POST count logs whose messages carry marker; returns their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    body = [{"id": log_id, "message": "%s %d" % (marker, n), "level": ("info", "error")[n % 2]}
            for n, log_id in enumerate(ids)]
    status, _, reply = send(service.base_url, service.key, json.dumps(body).encode())
    assert status == 202, reply
    return set(ids)


def primary_ids(service, marker):
    return {row[0] for row in query(service.db_url, "SELECT id::text FROM logs WHERE message LIKE '%s %%'" % marker)}


def test_reads_come_from_the_replica_and_equal_the_primarys(stack):
    primary, replica, service = stack
    # stats' counts (AS "rows") carry no marker: only this test's lines of the logs are theirs.
    primary_from, replica_from = log_size(primary), log_size(replica)
    marker = "Replica-Check-" + uuid.uuid4().hex[:8]
    searched = marker.lower()
    first = post_marked(service, marker, 30)
    wait_for(lambda: primary_ids(service, marker) == first, message="the first logs on the primary")
    wait_caught_up(replica)

    # Replay paused: the replica is as far behind as it will ever be, for as long as the test says.
    query(replica.url, "SELECT pg_wal_replay_pause()")
    try:
        read_key = manage(service, "create-key", "e2e", "--scope", "read").strip()
        status, _, live = get(service, "/logs/live", read_key)
        assert status == 200, live
        late = post_marked(service, marker, 5)
        wait_for(lambda: primary_ids(service, marker) == first | late, message="the late logs on the primary")
        # The live feed reads its ids from the primary: it shows them now, and its cursor never passes a log
        # the replica has not replayed yet.
        shown, cursor = set(), live["cursor"]

        def polled():  # the writer appends to the feed just after its commit
            nonlocal cursor
            status, _, live = get(service, "/logs/live?cursor=" + cursor, read_key)
            assert status == 200, live
            shown.update(log["id"] for log in live["logs"])
            cursor = live["cursor"]
            return shown == late
        wait_for(polled, timeout=10, interval=0.2, message="the live feed to show the late logs")
        # The key, issued after the replica stopped replaying, works at once: keys are looked up on the primary.
        status, _, page = get(service, "/logs?limit=1000&q=" + searched, read_key)
        assert status == 200, page
        # Readers see the logs the replica has replayed: the late ones not yet.
        assert {log["id"] for log in page["logs"]} == first
    finally:
        query(replica.url, "SELECT pg_wal_replay_resume()")
    wait_caught_up(replica)

    status, _, page = get(service, "/logs?limit=1000&q=" + searched, read_key)
    assert status == 200 and {log["id"] for log in page["logs"]} == first | late == primary_ids(service, marker)
    (stored,), = query(service.db_url, "SELECT count(*) FROM logs WHERE message LIKE '%s %%' AND level = 'ERROR'"
                       % marker)
    status, _, histogram = get(service, "/logs/histogram?level=error&q=" + searched, read_key)
    assert status == 200 and histogram["total"] == stored == 17
    some = page["logs"][10]["id"]
    status, _, around = get(service, "/logs/%s/context?before=3&after=3&q=%s" % (some, searched), read_key)
    assert status == 200 and around["log"]["id"] == some and len(around["before"]) == len(around["after"]) == 3
    tailed = manage(service, "tail", "e2e", "--grep", searched, "-n", "100")
    assert sum(marker in line for line in tailed.splitlines()) == 35
    shown = manage(service, "stats", "e2e")
    assert "ERROR" in shown

    # Four statements looked for the marker (the page twice, the histogram's rows at its edges, the
    # context, tail): on the replica, none on the primary; stats' counts (AS "rows") likewise.
    assert searches_for(replica, searched) >= 5
    assert searches_for(primary, searched) == 0
    assert statements(replica, 'AS "rows"', after=replica_from) >= 2
    assert statements(primary, 'AS "rows"', after=primary_from) == 0


@pytest.fixture
def bound_to_replica(servers, redis_server, tmp_path):
    """This process's models on a fresh database of the primary, reading from the replica."""
    primary, replica = servers
    url = primary.create_database(unique_database_name("alerts"))
    settings = base_settings(tmp_path).replace(database_url=url, database_read_url=replica.replica_url(url),
                                               redis_url=redis_server.url, allow_private_webhooks=True)
    tasks.configure(settings)
    models.create_tables()
    wait_caught_up(replica)  # the new database and its tables on the replica too
    yield settings
    for database in (models.database.obj, models.database.replica):
        database.close_all()


def test_routing_is_per_thread(servers, bound_to_replica):
    """A thread reading the replica sends no other thread's statements there (bind_ctx would send them all)."""
    inside, done = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)
    seen = {}

    def reader():
        with models.using_replica():
            inside.wait()
            seen["reader"] = models.database.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]
            done.wait()

    thread = threading.Thread(target=reader)
    thread.start()
    with models.database.connection_context():
        inside.wait()  # the reader is inside using_replica() now
        seen["writer"] = models.database.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]
        project = models.Project.create(name="written while another thread reads the replica")
        done.wait()
    thread.join(timeout=30)
    assert seen == {"reader": True, "writer": False}
    assert query(bound_to_replica.database_url, "SELECT name FROM projects WHERE id = %d" % project.id) \
        == [(project.name,)]


def test_alert_counts_read_the_replica_and_a_replica_down_fires_nothing(servers, bound_to_replica):
    """An absence rule is counted on the replica; with the replica down it is not evaluated, visibly, and does not fire."""
    primary, replica = servers
    settings = bound_to_replica
    searched = "heartbeat-" + uuid.uuid4().hex[:8]
    with models.database.connection_context():
        project = models.Project.create(name="alerted")
        search = alerts.save_search(project, "heartbeat", "q=" + searched)
        rule, _ = alerts.add_rule(search, "absence", 5, "webhook", "http://127.0.0.1:9/hook", settings)
    wait_caught_up(replica)
    replica.stop()
    try:
        with models.database.connection_context():
            assert alerts.evaluate_due(settings, now=rule.due_at) == []
            rule = models.AlertRule.get_by_id(rule.id)
            evaluation = rule.evaluations.order_by(models.AlertEvaluation.id.desc()).first()
            assert (rule.state, rule.evaluated_at, models.Notification.select().count()) == ("ok", None, 0)
            assert evaluation.count is None and evaluation.note.startswith("not evaluated: "), evaluation.note
            assert searches_for(primary, searched) == 0
            # As the consumer's pass does it: the replica asked once, every rule due noted with why, none counted.
            lag = tasks.replica_lag()
            assert isinstance(lag, Exception)
            rule.due_at = models.utcnow()
            rule.save()
            assert alerts.evaluate_due(settings, now=rule.due_at, replica_lag_seconds=lag) == []
            evaluation = rule.evaluations.order_by(models.AlertEvaluation.id.desc()).first()
            assert evaluation.count is None and "the read replica does not answer" in evaluation.note, evaluation.note
            rule = models.AlertRule.get_by_id(rule.id)
    finally:
        replica.start()
    # The replica back: counted there (0 logs), so the absence rule fires.
    with models.database.connection_context():
        made = alerts.evaluate_due(settings, now=rule.due_at)
        rule = models.AlertRule.get_by_id(rule.id)
        assert (len(made), rule.state, rule.last_count) == (1, "firing", 0)
    assert searches_for(replica, searched) >= 1
    assert searches_for(primary, searched) == 0


def test_replica_stopped_reads_answer_503_while_ingestion_goes_on(stack):
    primary, replica, service = stack
    read_key = manage(service, "create-key", "e2e", "--scope", "read").strip()
    sender = Sender(service, per_request=20, interval=0.05, max_seconds=60)
    sender.start()
    wait_for(lambda: len(sender.accepted) >= 200, message="records accepted before the replica stops")
    replica.stop()
    down_at = time.monotonic()
    try:
        status, headers, answer = get(service, "/logs", read_key)
        assert status == 503 and headers["Retry-After"] == str(RETRY_AFTER_SECONDS), answer
        wait_for(lambda: sender.count_since(202, down_at) >= 40, message="202s while the replica is down")
        status, _, _ = get(service, "/logs/histogram", read_key)
        assert status == 503
    finally:
        up_at = time.monotonic()
        replica.start()
    # The same web processes read again once it is back: no restart.
    wait_for(lambda: get(service, "/logs", read_key)[0] == 200, timeout=30, message="reads to work again")
    recovered_in = time.monotonic() - up_at
    accepted = sender.finish()
    service.wait_delivered(accepted, service.consumer)
    wait_caught_up(replica)
    status, _, histogram = get(service, "/logs/histogram", read_key)
    assert status == 200 and histogram["total"] == service.db_count()
    during = sender.statuses(since=down_at, until=up_at)
    print("\nreplica down %.1f s: POST /logs %s meanwhile; reads 200 again %.1f s after it was back"
          % (up_at - down_at, dict(during), recovered_in))
    assert set(during) == {202}
    service.web.check_alive()


def replay_lags(primary, stop, samples):
    """Sample the replica's replay lag as the primary sees it (pg_stat_replication) every 50 ms until stop is set."""
    while not stop.is_set():
        # The primary is up while this runs (the test stops it after the sampling): nothing to tolerate.
        samples.extend(float(lag) for lag, in query(
            primary.url, "SELECT coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication"))
        stop.wait(0.05)


def test_primary_restarted_under_load_with_the_replica_attached(stack):
    """The primary restarts under load: nothing lost, and the replica follows it again."""
    primary, replica, service = stack
    sender = Sender(service, per_request=20, interval=0.02, max_seconds=90)
    sender.start()
    stop, lags = threading.Event(), []
    sampler = threading.Thread(target=replay_lags, args=(primary, stop, lags), daemon=True)
    sampler.start()
    wait_for(lambda: len(sender.accepted) >= 3000, timeout=60, message="records accepted under load")
    stop.set()
    sampler.join(timeout=10)
    assert lags, "no replay lag sampled (the sampler's error is above)"
    primary.stop()
    time.sleep(PRIMARY_OUTAGE_SECONDS)  # the outage itself, not synchronisation
    up_at = time.monotonic()
    primary.start()
    wait_for(lambda: sender.count_since(202, up_at) >= 50, timeout=30, message="202s after the restart")
    accepted = sender.finish(allow_failures=True)
    service.wait_delivered(accepted, service.consumer)
    result = tally(service, "PostgreSQL primary restarted under load, replica attached", sender.sent, accepted)
    assert result.lost == 0 and result.db_duplicates == 0
    # The replica reconnects to the restarted primary by itself and replays all of it.
    wait_caught_up(replica, timeout=60)
    assert query(replica.replica_url(service.db_url), "SELECT count(*) FROM logs") == query(service.db_url, "SELECT count(*) FROM logs")
    print("  replay lag under load (pg_stat_replication.replay_lag, %d samples every 50 ms):"
          " median %.1f ms, max %.1f ms" % (len(lags), statistics.median(lags) * 1000, max(lags) * 1000))


def test_the_viewer_overview_reads_the_replica(servers, bound_to_replica):
    """Signing in is the primary's; the overview's charts are the replica's: 503 with Retry-After while it is down."""
    from logflow import create_app
    from test_viewer import add_user, sign_in
    primary, replica = servers
    client = create_app(bound_to_replica).test_client()
    with models.database.connection_context():
        project = models.Project.create(name="viewed")
    add_user("ada", project)
    wait_caught_up(replica)
    replica.stop()
    try:
        assert sign_in(client, "ada").status_code == 302
        page = client.get("/ui/")
        assert page.status_code == 503 and page.headers["Retry-After"] == str(bound_to_replica.retry_after_seconds)
    finally:
        replica.start()
    page = client.get("/ui/")
    assert page.status_code == 200 and "viewed" in page.text


def test_replica_lag_is_measured_on_the_replica(servers, bound_to_replica):
    """What alert windows move back by: 0 once replayed, the age of the last replayed commit while WAL waits."""
    primary, replica = servers
    # Polled: any WAL in flight (autovacuum, say) reads as a lag for a moment.
    wait_for(lambda: models.replica_lag_seconds() < 1, message="no lag")
    query(replica.url, "SELECT pg_wal_replay_pause()")
    try:
        with models.database.connection_context():
            models.Project.create(name="written while the replica waits")
        wait_for(lambda: query(replica.url, "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")[0][0],
                 message="WAL received and not replayed")
        assert models.replica_lag_seconds() > 0
    finally:
        query(replica.url, "SELECT pg_wal_replay_resume()")
    wait_for(lambda: models.replica_lag_seconds() < 1, message="no lag once replayed")


def test_connections_are_bounded_by_default():
    """Every PostgreSQL connection gets a connect timeout and TCP keepalives unless its URL sets its own."""
    bare = models.open_postgres("postgresql://reader@10.0.0.9/logflow")
    assert {name: bare.connect_params.get(name) for name in models.CONNECTION_DEFAULTS} == models.CONNECTION_DEFAULTS
    assert bare.connect_params["connect_timeout"] == 5
    own = models.open_postgres("postgresql://reader@10.0.0.9/logflow?connect_timeout=1&keepalives_idle=7")
    assert (own.connect_params["connect_timeout"], own.connect_params["keepalives_idle"]) == (1, 7)
    assert own.connect_params["keepalives"] == 1


def test_a_replica_that_never_answers_is_a_503_within_seconds(postgres_server, redis_server, tmp_path):
    """A replica accepting TCP and saying nothing: reads 503 after the default connect timeout, POST /logs goes on."""
    from logflow import create_app
    from helpers import serve
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = postgres_server.create_database(unique_database_name("silent"))
    settings = base_settings(tmp_path).replace(
        database_url=url, redis_url=redis_server.url,
        database_read_url="postgresql://reader@127.0.0.1:%d/logflow" % silent.getsockname()[1])
    tasks.configure(settings)
    models.create_tables()
    try:
        with models.database.connection_context():
            project = models.Project.create(name="silent replica")
            write_key, read_key = models.ApiKey.issue(project), models.ApiKey.issue(project, scope="read")
        with serve(create_app(settings)) as base_url:
            answer = {}

            def read():
                started = time.monotonic()
                request = urllib.request.Request(base_url + "/logs", headers={"X-API-Key": read_key})
                try:
                    urllib.request.urlopen(request, timeout=30).close()
                    answer["status"] = 200
                except urllib.error.HTTPError as error:
                    answer["status"] = error.code
                answer["seconds"] = time.monotonic() - started

            reader = threading.Thread(target=read)
            reader.start()
            silent.settimeout(10)
            waiting, _ = silent.accept()  # the read is connecting now; nothing answers it
            status, _, reply = send(base_url, write_key, b'{"message": "sent while a read waits"}')
            assert status == 202 and "status" not in answer, reply
            reader.join(timeout=30)
            waiting.close()
        assert answer["status"] == 503 and answer["seconds"] < 10, answer
    finally:
        silent.close()
        for database in (models.database.obj, models.database.replica):
            database.close_all()


def with_previous(server, text):
    """The statements of a server's log (log_statement=all) holding text, each with the one its backend ran before."""
    previous, found = {}, []
    with open(server.log_path, errors="replace") as log:
        for line in log:
            if "statement: " not in line or "[" not in line:
                continue
            pid = line.split("[", 1)[1].split("]", 1)[0]
            if text in line:
                found.append((line, previous.get(pid, "")))
            previous[pid] = line
    return found


def test_a_notifications_samples_are_read_on_the_replica_within_the_read_limit(servers, bound_to_replica):
    """The sample logs a notification carries are read as the count is (replica, statement_timeout), before the primary's transaction."""
    from logflow import create_app
    from helpers import drain_all, post_logs
    primary, replica = servers
    settings = bound_to_replica
    marker = "Sampled-" + uuid.uuid4().hex[:8]
    with models.database.connection_context():
        project = models.Project.create(name="sampled")
        key = models.ApiKey.issue(project)
        search = alerts.save_search(project, "sampled", "q=" + marker.lower())
        rule, _ = alerts.add_rule(search, "threshold", 5, "webhook", "http://127.0.0.1:9/hook", settings, threshold=1)
    response = post_logs(create_app(settings).test_client(), key, [{"message": "%s %d" % (marker, n)} for n in range(3)])
    assert response.status_code == 202, response.get_json()
    drain_all()
    wait_caught_up(replica)
    now = models.utcnow()
    with models.database.connection_context():
        models.AlertRule.update(due_at=now).where(models.AlertRule.id == rule.id).execute()
        made = alerts.evaluate_due(settings, now=now)
        assert len(made) == 1 and models.AlertRule.get_by_id(rule.id).state == "firing"
        body = json.loads(models.Notification.get_by_id(made[0]).body)
    assert sorted(sample["message"] for sample in body["samples"]) == ["%s %d" % (marker, n) for n in range(3)]
    assert searches_for(primary, marker.lower()) == 0
    # The samples' SELECT (ORDER BY ... DESC) ran in a read's transaction: right after its statement_timeout.
    before_samples = [before for line, before in with_previous(replica, marker.lower()) if "DESC" in line]
    assert before_samples and all("statement_timeout" in before for before in before_samples), before_samples


def set_primary_conninfo(replica, conninfo):
    """Point the replica's WAL receiver elsewhere (reloaded, no restart)."""
    connection = psycopg2.connect(replica.url, connect_timeout=5)
    try:
        connection.autocommit = True  # ALTER SYSTEM runs outside a transaction
        with connection.cursor() as cursor:
            cursor.execute("ALTER SYSTEM SET primary_conninfo = %s", (conninfo,))
            cursor.execute("SELECT pg_reload_conf()")
    finally:
        connection.close()


def test_a_replica_cut_off_from_its_primary_counts_no_rule(servers, bound_to_replica, monkeypatch):
    """A replica that receives nothing has replayed all it received: the lag is read against the primary's position."""
    primary, replica = servers
    settings = bound_to_replica
    with models.database.connection_context():
        project = models.Project.create(name="cut off")
        search = alerts.save_search(project, "heartbeat", "q=beat-" + uuid.uuid4().hex[:8])
        rule, _ = alerts.add_rule(search, "absence", 5, "webhook", "http://127.0.0.1:9/hook", settings)
    wait_caught_up(replica)
    (conninfo,), = query(replica.url, "SHOW primary_conninfo")
    set_primary_conninfo(replica, "host=127.0.0.1 port=1")
    try:
        wait_for(lambda: query(primary.url, "SELECT count(*) FROM pg_stat_replication") == [(0,)],
                 message="the replica to leave its primary")
        with models.database.connection_context():
            models.Project.create(name="written while the replica hears nothing")
        lag = models.replica_lag_seconds(wait_seconds=0.5)
        assert lag is not None and lag >= 0.5
        # What a minute cut off would show, in a second: the bound lowered below this lag.
        monkeypatch.setattr(alerts, "MAX_REPLICA_LAG_SECONDS", 0.1)
        with models.database.connection_context():
            assert alerts.evaluate_due(settings, now=rule.due_at, replica_lag_seconds=lag) == []
            rule = models.AlertRule.get_by_id(rule.id)
            evaluation = rule.evaluations.order_by(models.AlertEvaluation.id.desc()).first()
            assert (rule.state, rule.evaluated_at, models.Notification.select().count()) == ("ok", None, 0)
            assert evaluation.count is None and "s behind its primary" in evaluation.note, evaluation.note
    finally:
        set_primary_conninfo(replica, conninfo)
    wait_caught_up(replica)
    assert models.replica_lag_seconds() < 1
