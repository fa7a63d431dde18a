"""Fixtures: real Redis and PostgreSQL for the session, and an app per test on each backend."""
import os
import secrets
import signal

import pytest
from click.testing import CliRunner

import config
import manage
import models
import services
import tasks
from logflow import create_app
from models import ApiKey, Project

# A shell starts a background job (`bash .ci/run &`) with SIGINT ignored, and the processes the
# tests start would inherit that: the Ctrl-C of tail --follow's test would do nothing. Handled
# here, SIGINT is back to its default in every child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def unavailable(error):
    """Skip on a developer's machine without the servers; fail in CI, where they must exist."""
    if os.environ.get("CI"):
        pytest.fail(str(error))
    pytest.skip(str(error))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    try:
        server = services.start_redis(str(tmp_path_factory.mktemp("redis")))
    except services.ServiceUnavailable as error:
        unavailable(error)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of three primaries on 127.0.0.1; its url is REDIS_URL's cluster form."""
    try:
        cluster = services.start_redis_cluster(str(tmp_path_factory.mktemp("redis-cluster")))
    except services.ServiceUnavailable as error:
        unavailable(error)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    try:
        server = services.start_postgres(str(tmp_path_factory.mktemp("postgres")))
    except services.ServiceUnavailable as error:
        unavailable(error)
    yield server
    services.shutdown_all()


# A web process on PostgreSQL refuses to start without a secret: one for this run, in the
# environment too for the processes the tests start (tests/processes.py).
SECRET_KEY = os.environ.setdefault("LOGFLOW_SECRET_KEY", secrets.token_urlsafe(32))


def base_settings(tmp_path):
    """Dev-mode settings inside tmp_path, with fast retries and short leases for tests.

    No past window (LOGFLOW_PAST_WINDOW_DAYS=0): the tests' records carry fixed
    dates (2026-11-27...), which the default window (the retention, 30 days)
    would replace once they are a month old. tests/test_bounds.py tests the window.
    """
    return config.Settings(data_dir=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"),
                           retry_base_seconds=0.05, retry_max_seconds=0.2, lease_seconds=5,
                           key_cache_seconds=0, secret_key=SECRET_KEY, past_window_days=0)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path):
    """The settings of one backend: SQLite files, or PostgreSQL plus Redis."""
    settings = base_settings(tmp_path)
    if request.param == "postgres":
        postgres = request.getfixturevalue("postgres_server")
        redis_server = request.getfixturevalue("redis_server")
        settings = settings.replace(database_url=postgres.url, redis_url=redis_server.url)
    return settings


@pytest.fixture
def bound(settings):
    """Bind models, spool and queue to fresh, empty stores of the backend."""
    tasks.configure(settings)
    if settings.redis_url:
        tasks.runtime.spool.client.flushdb()
    if settings.database_url:
        with models.database.connection_context():
            models.database.drop_tables(models.MODELS, safe=True)
    models.create_tables()
    yield settings
    close_pool = getattr(models.database.obj, "close_all", None)
    if close_pool:
        close_pool()


@pytest.fixture
def app(bound):
    return create_app(bound)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def project(bound):
    with models.database.connection_context():
        return Project.create(name="acme")


@pytest.fixture
def key(project):
    with models.database.connection_context():
        return ApiKey.issue(project)


@pytest.fixture
def read_key(project):
    """A key of the same project with scope read (GET /logs), which cannot send logs."""
    with models.database.connection_context():
        return ApiKey.issue(project, scope="read")


@pytest.fixture
def run(bound):
    """Run a manage.py command against the test's backend; returns the click Result."""
    environment = {"DATABASE_URL": bound.database_url, "REDIS_URL": bound.redis_url,
                   "LOGFLOW_DATA_DIR": bound.data_dir, "LOGFLOW_LOG_DIR": bound.log_dir}

    def run(*arguments, stdin=None, **changes):
        """`stdin` is the command's standard input; `changes` override variables of that environment (REDIS_URL=..., say)."""
        return CliRunner().invoke(manage.cli, list(arguments), input=stdin, env={**environment, **changes})
    return run
