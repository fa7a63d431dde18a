"""Key lookups cached for database outages: what manage.py takes away stays away, in every web process."""
import subprocess
import sys
import threading

import orjson
import peewee
import pytest

import models
import tasks
from helpers import post_logs
from logflow import APIError, KeyCache, create_app
from processes import ROOT, dev_mode_environment, make_service, post
from test_faults import close_after, own_postgres  # noqa: F401  (the fixture)
from test_manage import closed_port, unreachable_redis_url  # noqa: F401  (the fixtures)


def break_database(settings):
    """Point the models at a database that cannot be reached: PostgreSQL on a closed port, SQLite in no folder."""
    models.database.initialize(peewee.PostgresqlDatabase("none", host="127.0.0.1", port=1)
                               if settings.database_url else
                               peewee.SqliteDatabase("/nonexistent/folder/logflow.db"))


def web_process(settings):
    """A test client of a new web process: its own empty key cache, which asks the database every time."""
    return create_app(settings.replace(key_cache_seconds=0)).test_client()


def manage_py(settings, tmp_path, *arguments):
    """manage.py in a process of its own, on the test's stores, as an operator runs it."""
    stores = {name: value for name, value in (("DATABASE_URL", settings.database_url),
                                               ("REDIS_URL", settings.redis_url)) if value}
    return subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, capture_output=True, text=True,
                          env=dev_mode_environment(tmp_path, **stores), timeout=60)


@pytest.mark.parametrize("command", ["revoke-key", "deactivate"])
def test_what_manage_py_takes_away_stays_away_during_a_database_outage(run, bound, command):
    key = run("add-project", "shop").stdout.strip()
    other_key = run("add-project", "other").stdout.strip()
    running = web_process(bound)
    assert post_logs(running, key, {"message": "before"}).status_code == 202
    changed = run(command, key[:11] if command == "revoke-key" else "shop")
    assert changed.exit_code == 0, changed.output
    # A key in use is looked up again within LOGFLOW_KEY_CACHE_SECONDS of a change; the other project's is.
    assert post_logs(running, other_key, {"message": "after"}).status_code == 202
    restarted = web_process(bound)
    break_database(bound)
    try:
        # Neither this process's own earlier lookup nor the one it shared serves the key any more.
        for client in (running, restarted):
            refused = post_logs(client, key, {"message": "during"})
            assert refused.status_code == 503, refused.json
            assert "database is unavailable" in refused.json["error"]
            assert post_logs(client, other_key, {"message": "during"}).status_code == 202
    finally:
        models.bind_database(bound)


@pytest.mark.parametrize("command, outdates", [
    (["activate", "shop"], True), (["set-rate-limit", "shop", "5"], True), (["set-retention", "shop", "3"], True),
    (["create-key", "shop"], False), (["revoke-key", "lf_" + "x" * 8], False)])
def test_every_command_that_changes_a_project_outdates_earlier_lookups(run, bound, command, outdates):
    """Stale lookups serve an outage wrongly (403 to a re-activated project, an old rate limit): all of them go.

    A new key and a command that failed take nothing away."""
    key = run("add-project", "shop").stdout.strip()
    running = web_process(bound)
    assert post_logs(running, key, {"message": "before"}).status_code == 202
    result = run(*command)
    assert result.exit_code == (0 if outdates or command[0] == "create-key" else 1), result.output
    break_database(bound)
    try:
        assert post_logs(running, key, {"message": "during"}).status_code == (503 if outdates else 202)
    finally:
        models.bind_database(bound)


class PausedSharing:
    """The spool, except that sharing a memo waits for `resume`: a lookup held between its database read and its share."""

    def __init__(self, spool):
        self.spool = spool
        self.holding = threading.Event()
        self.resume = threading.Event()

    def __getattr__(self, name):
        return getattr(self.spool, name)

    def remember(self, name, value, seconds):
        self.holding.set()
        assert self.resume.wait(60)
        return self.spool.remember(name, value, seconds)


def test_a_lookup_in_flight_while_its_key_is_revoked_is_not_trusted_later(run, bound, tmp_path):
    key = run("add-project", "shop").stdout.strip()
    cache = KeyCache(0, 5)
    real_spool = tasks.runtime.spool
    tasks.runtime.spool = paused = PausedSharing(real_spool)
    found = []
    lookup = threading.Thread(target=lambda: found.append(cache.identify(key, ("db",))))
    lookup.start()
    try:
        assert paused.holding.wait(30), "the lookup never came to share what it read"
        # The database said "live"; the revocation commits before that answer is shared.
        revoked = manage_py(bound, tmp_path, "revoke-key", key[:11])
        assert revoked.returncode == 0, revoked.stderr
    finally:
        paused.resume.set()
        lookup.join(timeout=30)
        tasks.runtime.spool = real_spool
    assert found and found[0][1] is True  # the lookup itself answered what the database said then
    break_database(bound)
    try:
        for each in (cache, KeyCache(0, 5)):  # this process later, and another one
            with pytest.raises(APIError) as refused:
                each.identify(key, ("db",))
            assert refused.value.status == 503
    finally:
        models.bind_database(bound)


def test_a_revocation_the_store_does_not_hear_of_says_so_and_can_be_finished(run, bound, unreachable_redis_url):
    if not bound.database_url:
        pytest.skip("dev mode's spool is a file beside the database")
    key = run("add-project", "shop").stdout.strip()
    running = web_process(bound)
    assert post_logs(running, key, {"message": "x"}).status_code == 202
    missed = run("revoke-key", key[:11], REDIS_URL=unreachable_redis_url)
    assert (missed.exit_code, missed.stdout) == (1, ""), missed.output
    [line] = missed.stderr.splitlines()
    assert line.startswith("error: the key is revoked in the database, but the queue's store could not be told")
    assert "may go on trusting" in line and "run this command again" in line
    with models.database.connection_context():
        assert models.ApiKey.get().revoked_at is not None
    finished = run("revoke-key", key[:11])
    assert finished.exit_code == 0 and "revoked already" in finished.stdout
    restarted = web_process(bound)
    break_database(bound)
    try:
        assert post_logs(running, key, {"message": "x"}).status_code == 503
        assert post_logs(restarted, key, {"message": "x"}).status_code == 503
    finally:
        models.bind_database(bound)


@pytest.mark.parametrize("shared", [[1, True, ["db"], None], [1, True, ["db"], None, "ingest"],
                                    [1, True, ["db"], None, "ingest", None]])
def test_lookups_shared_by_earlier_versions_serve_until_the_first_change(run, bound, key, project, shared):
    """Memos of 4, 5 and 6 fields, under the name web processes used before epochs."""
    tasks.runtime.spool.remember(models.hash_key(key), orjson.dumps(shared), 60)
    fresh = KeyCache(0, 5)
    break_database(bound)
    try:
        assert fresh.identify(key, ("db", "file")) == (project.id, True, ("db",), None, "ingest", None)
    finally:
        models.bind_database(bound)
    assert run("set-retention", project.name, "7").exit_code == 0  # unrelated to the key, yet a change
    break_database(bound)
    try:
        with pytest.raises(APIError) as refused:
            KeyCache(0, 5).identify(key, ("db", "file"))
        assert refused.value.status == 503
    finally:
        models.bind_database(bound)


def test_a_revoked_key_stays_refused_when_postgresql_stops_and_web_processes_restart(
        request, tmp_path, own_postgres, redis_server):
    """The issue's reproduction with real processes: revoke, deactivate, stop PostgreSQL, restart gunicorn."""
    service = close_after(request, make_service(tmp_path, own_postgres.url, redis_server.url,
                                                LOGFLOW_KEY_CACHE_SECONDS=0))

    def manage(*arguments):
        done = subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, env=service.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (arguments, done.stderr)
        return done.stdout.strip()
    keys = {"revoked": service.key, "kept": manage("create-key", "e2e"),
            "deactivated": manage("add-project", "paused")}
    web = service.start_web()
    assert {name: post(service.base_url, key, b'{"message": "before"}')[0] for name, key in keys.items()} == {
        "revoked": 202, "kept": 202, "deactivated": 202}
    manage("revoke-key", keys["revoked"][:11])
    manage("deactivate", "paused")
    assert post(service.base_url, keys["kept"], b'{"message": "after"}')[0] == 202
    own_postgres.stop()
    web.stop()
    service.start_web()
    statuses = {name: post(service.base_url, key, b'{"message": "during"}')[0] for name, key in keys.items()}
    assert statuses == {"revoked": 503, "kept": 202, "deactivated": 503}
