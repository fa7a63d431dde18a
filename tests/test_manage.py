"""The command line: projects, keys shown once and stored hashed, rotation and deactivation."""
import hashlib
import os
import re
import socket
import subprocess
import sys
import urllib.parse

import pytest
from click.testing import CliRunner

import manage
import models
import query
from helpers import drain_all, post_logs
from processes import ROOT, dev_mode_environment


def test_add_project_prints_its_key_once_and_stores_only_a_hash(run, client):
    result = run("add-project", "shop")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("lf_") and len(key) > 40
    assert "shown once" in result.stderr
    with models.database.connection_context():
        [stored] = models.ApiKey.select()
        assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key not in str(stored.__data__)
    assert post_logs(client, key, {"message": "x"}).status_code == 202
    listing = run("list-projects")
    assert "shop" in listing.stdout and key[:11] in listing.stdout and key not in listing.stdout


def test_rotation_with_two_keys(run, client):
    first = run("add-project", "shop").stdout.strip()
    second = run("create-key", "shop").stdout.strip()
    assert first != second
    assert run("revoke-key", first[:11]).exit_code == 0
    assert post_logs(client, first, {"message": "x"}).status_code == 401
    assert post_logs(client, second, {"message": "x"}).status_code == 202
    # Again: the key stays revoked, and cached lookups are outdated once more (for a store that was down).
    again = run("revoke-key", first[:11])
    assert again.exit_code == 0 and "revoked already" in again.stdout
    assert post_logs(client, first, {"message": "x"}).status_code == 401
    unknown = run("revoke-key", "lf_nothing")
    assert unknown.exit_code == 1 and "no live key" in unknown.stderr


def test_deactivate_and_activate(run, client):
    key = run("add-project", "shop").stdout.strip()
    assert run("deactivate", "shop").exit_code == 0
    assert post_logs(client, key, {"message": "x"}).status_code == 403
    assert run("activate", "1").exit_code == 0  # by id too
    assert post_logs(client, key, {"message": "x"}).status_code == 202


# What a hostile client or an old version could leave in stored text: a carriage return that
# overwrites the line, CSI erase-line, OSC title, OSC 52 clipboard write, C1 CSI, DEL, a bidi override.
HOSTILE = "a\rb\x1b[2Kc\x1b]0;title\x07d\x1b]52;c;ZXZpbA==\x07e\x9bf\x7fg\u202eh"
# The same text as manage.py shows it.
ESCAPED = "a\\rb\\x1b[2Kc\\x1b]0;title\\x07d\\x1b]52;c;ZXZpbA==\\x07e\\u009bf\\u007fg\\u202eh"


def assert_no_control_characters(text):
    """No character in the text that a terminal would act on rather than show (newlines between lines aside)."""
    for line in text.splitlines():
        assert not models.CONTROL_CHARACTERS.search(line), repr(line)


def test_project_names_that_are_numbers_blank_or_hold_control_characters_are_refused(run):
    for name, reason in [("12", "cannot be a number"), ("\u0661\u0662", "cannot be a number"),
                         ("", "empty or blank"), ("  ", "empty or blank"), (" shop", "start or end with a space"),
                         ("a\x1b[2Kb", "control characters"), ("a\tb", "control characters"),
                         ("a\x9bb", "control characters"), ("a\x7fb", "control characters"),
                         ("a\u202eb", "control characters"), ("a\u2066b", "control characters")]:
        refused = run("add-project", name)
        assert refused.exit_code == 1 and reason in refused.stderr and refused.stdout == "", (name, refused.output)
        assert_no_control_characters(refused.stderr)
    with models.database.connection_context():
        assert models.Project.select().count() == 0
    assert run("add-project", "shop-2").exit_code == 0 and run("add-project", "1a").exit_code == 0


def test_a_number_is_an_id_never_a_name(run):
    run("add-project", "first")
    with models.database.connection_context():
        for number in range(2, 12):
            models.Project.create(name="p%d" % number)
        # A name older versions accepted; project 1 was updated since, as projects are.
        named_one = models.Project.create(name="1")
        models.Project.update(storage="db").where(models.Project.id == 1).execute()
    assert named_one.id == 12
    assert run("set-rate-limit", "1", "5").stdout.strip() == "project first: 5 records per second"
    assert run("deactivate", "01").stdout.strip() == "project first deactivated"
    with models.database.connection_context():
        assert models.Project.get_by_id(1).rate_limit == 5 and not models.Project.get_by_id(1).is_active
        assert models.Project.get_by_id(12).rate_limit is None and models.Project.get_by_id(12).is_active
    # The project named "1" answers to its id; the error says so to whoever asks for a number it is named.
    assert run("set-rate-limit", "12", "7").stdout.strip() == "project 1: 7 records per second"
    with models.database.connection_context():
        models.Project.update(name="40").where(models.Project.id == 12).execute()
    missing = run("tail", "40")
    assert missing.exit_code == 1 and "no project with id 40" in missing.stderr and "give 12" in missing.stderr
    missing = run("stats", "99999999999999999999999")
    assert missing.exit_code == 1 and "no project with id" in missing.stderr
    assert "no project named 'nobody'" in run("create-key", "nobody").stderr


def test_stored_names_are_shown_escaped_by_every_command(run, bound):
    with models.database.connection_context():
        # As older versions let add-project store it.
        project = models.Project.create(name=HOSTILE)
        models.ApiKey.issue(project)
    outputs = [run("list-projects"), run("stats"), run("prune", "--dry-run"), run("set-rate-limit", "1", "5"),
               run("set-retention", "1", "3"), run("deactivate", "1"), run("activate", "1")]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert ESCAPED in result.stdout
        assert_no_control_characters(result.output)
    # Arguments too, in the errors that repeat them.
    for arguments in (["tail", "no " + HOSTILE], ["revoke-key", "lf_\x1b]52;c;ZXZpbA==\x07"],
                      ["add-project", HOSTILE]):
        refused = run(*arguments)
        assert refused.exit_code == 1 and "\\x1b" in refused.stderr, refused.output
        assert_no_control_characters(refused.output)


def test_storage_option(run):
    assert run("add-project", "archive", "--storage", "file").exit_code == 0
    with models.database.connection_context():
        assert models.Project.get(name="archive").writers(("db", "file")) == ("file",)
    bad = run("add-project", "other", "--storage", "tape")
    assert bad.exit_code == 2 and "storage must be" in bad.stderr


def test_set_rate_limit(run):
    run("add-project", "shop")
    assert run("set-rate-limit", "shop", "500").stdout.strip() == "project shop: 500 records per second"
    with models.database.connection_context():
        assert models.Project.get(name="shop").rate_limit == 500
    assert "500" in run("list-projects").stdout
    assert run("set-rate-limit", "shop", "-1").exit_code == 2
    refused = run("set-rate-limit", "shop", "²")
    assert refused.exit_code == 2 and "RECORDS_PER_SECOND" in refused.output
    for too_many in ("2147483648", "99999999999", "9" * 5000):  # PostgreSQL's "integer out of range", SQLite's OverflowError
        refused = run("set-rate-limit", "shop", too_many)
        assert refused.exit_code == 2 and "is more than 2147483647" in refused.stderr, refused.output
    assert run("set-rate-limit", "shop", "2147483647").exit_code == 0
    assert run("set-rate-limit", "shop", "default").stdout.strip() == "project shop: no rate limit (the default)"
    with models.database.connection_context():
        assert models.Project.get(name="shop").rate_limit is None


def test_the_trigram_index_serves_text_search(run, bound, key, client, project):
    if not bound.database_url:
        assert "only PostgreSQL" in run("search-index").stderr
        return
    post_logs(client, key, [{"message": "needle %d" % number if number % 500 == 0 else "hay %d" % number}
                            for number in range(1000)])
    drain_all()
    assert run("search-index").exit_code == 0
    assert run("search-index").exit_code == 0  # again: nothing to do
    with models.database.connection_context():
        # What a cancelled concurrent build leaves: an index PostgreSQL keeps up but never reads.
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('%s')" % models.SEARCH_INDEX
        models.database.execute_sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(%s)",
                                    (models.SEARCH_INDEX,))
        assert models.database.execute_sql(valid).fetchone() == (False,)
    assert run("search-index").exit_code == 0
    with models.database.connection_context():
        assert models.database.execute_sql(valid).fetchone() == (True,)
        names = [row[0] for row in models.database.execute_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'logs'")]
        assert models.SEARCH_INDEX in names
        models.database.execute_sql("ANALYZE logs")
        with models.database.atomic():
            # Few rows: without this the planner rightly prefers reading them all.
            models.database.execute_sql("SET LOCAL enable_seqscan = off")
            sql, params = query.select_logs(project.id, query.parse_filter([("q", "NEEDLE")])).sql()
            plan = "\n".join(row[0] for row in models.database.execute_sql("EXPLAIN " + sql, params))
    assert models.SEARCH_INDEX in plan
    assert sorted(log["message"] for log in query.page(project.id, query.parse_filter([("q", "needle")]))[0]) == [
        "needle 0", "needle 500"]
    assert run("search-index", "--drop").exit_code == 0


def test_errors_go_to_stderr_with_a_nonzero_exit(run):
    run("add-project", "shop")
    duplicate = run("add-project", "shop")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr
    missing = run("create-key", "nobody")
    assert missing.exit_code == 1 and "no project" in missing.stderr and missing.stdout == ""


def test_init_db_is_idempotent(run):
    assert run("init-db").exit_code == 0
    assert run("init-db").exit_code == 0


@pytest.mark.parametrize("command", ["init-db", "add-project", "list-projects", "create-key",
                                     "revoke-key", "deactivate", "activate", "set-rate-limit",
                                     "quarantine list", "quarantine show", "quarantine replay",
                                     "quarantine purge", "search add", "search list", "search remove",
                                     "alert add", "alert list", "alert remove", "alert test"])
def test_every_command_has_help(command):
    result = CliRunner().invoke(manage.cli, command.split() + ["--help"])
    assert result.exit_code == 0 and len(result.output.splitlines()) > 3


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that refuses connections: bound by this test, never listening."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield closed.getsockname()[1]


@pytest.fixture
def unreachable_database_url(closed_port):
    """A PostgreSQL URL on that port."""
    return "postgresql://logflow@127.0.0.1:%d/logflow" % closed_port


@pytest.fixture
def unreachable_redis_url(closed_port):
    """A Redis URL on that port."""
    return "redis://127.0.0.1:%d/0" % closed_port


def test_help_never_touches_the_database(unreachable_database_url, tmp_path):
    data_dir = tmp_path / "data"
    environment = {"DATABASE_URL": unreachable_database_url, "REDIS_URL": None,
                   "LOGFLOW_DATA_DIR": str(data_dir), "LOGFLOW_LOG_DIR": str(tmp_path / "logs")}
    result = CliRunner().invoke(manage.cli, ["tail", "--help"], env=environment)
    assert result.exit_code == 0, result.output
    assert "--follow" in result.stdout
    # Dev mode: --help makes no database file, and a command makes the tables it needs.
    environment["DATABASE_URL"] = None
    assert CliRunner().invoke(manage.cli, ["list-projects", "--help"], env=environment).exit_code == 0
    assert not os.path.exists(data_dir / "logflow.db")
    created = CliRunner().invoke(manage.cli, ["add-project", "shop"], env=environment)
    assert created.exit_code == 0, created.output
    assert "shop" in CliRunner().invoke(manage.cli, ["list-projects"], env=environment).stdout


def test_an_unreachable_database_is_one_line_of_error(unreachable_database_url, redis_server, tmp_path):
    environment = {"DATABASE_URL": unreachable_database_url, "REDIS_URL": redis_server.url,
                   "LOGFLOW_DATA_DIR": str(tmp_path / "data"), "LOGFLOW_LOG_DIR": str(tmp_path / "logs")}
    port = urllib.parse.urlsplit(unreachable_database_url).port
    for command in (["list-projects"], ["add-project", "shop"], ["tail", "shop"], ["stats"]):
        result = CliRunner().invoke(manage.cli, command, env=environment)
        assert result.exit_code == 1, (command, result.output)
        [line] = result.stderr.splitlines()
        assert line.startswith("error: the database is unavailable: ") and "port %d" % port in line
    # The queue lives in Redis: stats shows it before it fails on the database.
    assert re.search(r"^db +\d+ ", result.stdout, re.M) and re.search(r"^file +\d+ ", result.stdout, re.M)


def test_an_unreachable_queue_is_one_line_of_error(run, project, unreachable_redis_url):
    with models.database.connection_context():
        models.Quarantined.add("db", (project.id, "2026-11-28T00:00:00Z", {"message": "x"}), ValueError("refused"))
    result = run("quarantine", "replay", "--all", REDIS_URL=unreachable_redis_url)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the queue is unavailable: Redis: ")
    with models.database.connection_context():
        assert models.Quarantined.select().count() == 1  # not queued again, so kept here


def manage_py(arguments, environment):
    """manage.py run as an operator runs it: a process of its own, which imports everything afresh."""
    return subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variable, value, reason", [
    ("LOGFLOW_RETENTION_DAYS", "-3", "must be a whole number from 0 (keep forever) to 36500, not -3"),
    ("LOGFLOW_STORAGE", "foo", "storage must be db, file or db,file, not 'foo'"),
    ("LOGFLOW_BATCH_WAIT_SECONDS", "abc", "must be a number of seconds from 0 (no wait) to 86400, not 'abc'"),
    ("LOGFLOW_MAX_RECORDS", "0", "must be a whole number of 1 or more, not 0"),
    ("REDIS_URL", "http://x", "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://, not http://")])
def test_a_bad_setting_is_one_line_of_error_and_help_still_works(variable, value, reason, tmp_path):
    environment = dev_mode_environment(tmp_path, **{variable: value})
    expected = (1, ["error: %s: %s" % (variable, reason)], "")
    # In a process of its own, and here, where tasks is bound to the tests' settings already.
    failed = manage_py(["list-projects"], environment)
    assert (failed.returncode, failed.stderr.splitlines(), failed.stdout) == expected
    failed = CliRunner().invoke(manage.cli, ["list-projects"], env=environment)
    assert (failed.exit_code, failed.stderr.splitlines(), failed.stdout) == expected
    assert not os.path.exists(tmp_path / "data")
    for arguments in (["--help"], ["stats", "--help"], ["quarantine", "list", "--help"]):
        shown = manage_py(arguments, environment)
        assert shown.returncode == 0 and shown.stdout.startswith("Usage: manage.py "), shown.stderr


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_role_that_may_only_read_can_list_projects(bound, project):
    with models.database.connection_context():
        models.database.execute_sql("DO $$ BEGIN CREATE ROLE logflow_reader LOGIN;"
                                    " EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        # PostgreSQL 15's default, stated for older servers.
        models.database.execute_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        models.database.execute_sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO logflow_reader")
    url = urllib.parse.urlsplit(bound.database_url)
    reader_url = url._replace(netloc="logflow_reader@%s:%d" % (url.hostname, url.port)).geturl()
    environment = {"DATABASE_URL": reader_url, "REDIS_URL": bound.redis_url,
                   "LOGFLOW_DATA_DIR": bound.data_dir, "LOGFLOW_LOG_DIR": bound.log_dir}
    listed = CliRunner().invoke(manage.cli, ["list-projects"], env=environment)
    assert listed.exit_code == 0, listed.output
    assert "acme" in listed.stdout
    refused = CliRunner().invoke(manage.cli, ["add-project", "shop"], env=environment)
    assert refused.exit_code == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: the database refused: permission denied for table projects")
    assert line.endswith("(if a table or column is missing: python manage.py init-db)")
    # init-db's own refusal does not send the user back to init-db.
    refused = CliRunner().invoke(manage.cli, ["init-db"], env=environment)
    assert refused.exit_code == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: the database refused: ") and "init-db" not in line, line


def test_a_missing_column_is_one_line_that_names_init_db(run, bound):
    from test_retention import OldProject
    with models.database.connection_context():
        models.database.drop_tables(models.MODELS)
        OldProject.create_table()
        OldProject.create(name="shop")
    result = run("set-retention", "shop", "0")
    if bound.database_url:
        listed = run("list-projects")
        assert (listed.exit_code, listed.stdout) == (1, ""), listed.output  # no table header before the error
        # PostgreSQL: the schema is init-db's to change, as after an upgrade.
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert "retention_days" in line and "python manage.py init-db" in line
        assert run("init-db").exit_code == 0
        result = run("set-retention", "shop", "0")
    # Dev mode has no init-db step: the command adds the column itself.
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "project shop: kept forever"
