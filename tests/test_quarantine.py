"""Records a writer cannot store: quarantined with their error, never blocking their batch."""
import logging
import os
import uuid

import orjson
import pytest
from click.testing import CliRunner

import manage
import models
import spool
import tasks
from helpers import drain_all, file_records, post_logs, stored_logs, wait_for
from test_manage import ESCAPED, HOSTILE, assert_no_control_characters


def record(message, **fields):
    return dict({"id": str(uuid.uuid4()), "level": "INFO", "message": message, "metadata": {},
                 "timestamp": "2026-11-27T12:00:00.000000Z"}, **fields)


def spool_directly(project_id, records, writers=("db", "file")):
    """Queue records past the door's checks, as only a bug or a hand-edited spool could."""
    payload = spool.encode(project_id, "2026-11-27T12:00:01.000000Z", records)
    tasks.runtime.spool.push(payload, list(writers), len(records))


def quarantine_rows():
    with models.database.connection_context():
        return list(models.Quarantined.select().order_by(models.Quarantined.id))


def test_a_poison_record_is_quarantined_and_the_rest_of_its_batch_stored(bound, project, caplog):
    # No project 999: the database refuses the row (foreign key); the file writer does not care.
    spool_directly(project.id, [record("good 1"), record("good 2")])
    spool_directly(999, [record("orphan")])
    spool_directly(project.id, [record("good 3")])
    with caplog.at_level(logging.WARNING, logger="logflow"):
        drain_all()
    assert sorted(r["message"] for r in stored_logs()) == ["good 1", "good 2", "good 3"]
    assert len(file_records(bound.log_dir)) == 4
    [entry] = quarantine_rows()
    assert (entry.writer, entry.project) == ("db", 999)
    assert "IntegrityError" in entry.error and orjson.loads(entry.record)["message"] == "orphan"
    assert "quarantined as %d" % entry.id in caplog.text
    assert tasks.runtime.spool.depth("db") == 0


def test_a_record_the_file_writer_cannot_shape_is_quarantined(bound, project):
    broken = record("no timestamp")
    del broken["timestamp"]
    spool_directly(project.id, [record("fine"), broken], writers=["file"])
    drain_all()
    assert [r["message"] for r in file_records(bound.log_dir)] == ["fine"]
    [entry] = quarantine_rows()
    assert entry.writer == "file" and entry.error.startswith("KeyError")


def test_a_nul_character_past_the_door_is_quarantined_not_lost(bound, project):
    spool_directly(project.id, [record("nul \x00 here"), record("clean")], writers=["db"])
    drain_all()
    messages = [r["message"] for r in stored_logs()]
    if bound.database_url:  # PostgreSQL refuses NUL in text; SQLite stores it
        assert messages == ["clean"]
        [entry] = quarantine_rows()
        assert orjson.loads(entry.record)["message"] == "nul \x00 here"
    else:
        assert sorted(messages) == ["clean", "nul \x00 here"]


def test_an_outage_is_retried_never_quarantined(client, key, project, bound):
    os.makedirs(bound.log_dir)
    blocker = os.path.join(bound.log_dir, str(project.id))
    open(blocker, "w").close()
    post_logs(client, key, [{"message": "waits"}])
    drain_all()
    assert quarantine_rows() == [] and tasks.runtime.spool.depth("file") == 1


@pytest.fixture
def cli(bound):
    environment = {"DATABASE_URL": bound.database_url, "REDIS_URL": bound.redis_url,
                   "LOGFLOW_DATA_DIR": bound.data_dir, "LOGFLOW_LOG_DIR": bound.log_dir}

    def run(*arguments):
        result = CliRunner().invoke(manage.cli, list(arguments), env=environment)
        tasks.configure(bound)  # the command rebound everything to equal settings; keep ours
        return result
    return run


def test_quarantine_commands(cli, bound, project):
    spool_directly(999, [record("orphan 1"), record("orphan 2")], writers=["db"])
    drain_all()
    first, second = quarantine_rows()
    listing = cli("quarantine", "list")
    assert listing.exit_code == 0 and "2 quarantined records" in listing.stdout
    assert "IntegrityError" in listing.stdout
    shown = cli("quarantine", "show", str(first.id))
    assert orjson.loads(shown.stdout)["record"]["message"] == "orphan 1"
    assert cli("quarantine", "show", "12345").exit_code == 1
    assert cli("quarantine", "replay").exit_code == 1  # neither an id nor --all

    # Fix the cause, then replay: the record reaches the database and leaves the quarantine.
    with models.database.connection_context():
        models.Project.create(id=999, name="late")
    assert cli("quarantine", "replay", str(first.id)).stdout.strip() == "replayed 1 record"
    drain_all()
    assert [r["message"] for r in stored_logs(999)] == ["orphan 1"]
    assert [entry.id for entry in quarantine_rows()] == [second.id]

    assert cli("quarantine", "purge", "--all").stdout.strip() == "purged 1 record"
    assert quarantine_rows() == []


def test_an_unreachable_database_is_an_outage_not_a_bad_record(bound, project, caplog):
    if not bound.database_url:
        pytest.skip("SQLite cannot be unreachable in the same way")
    spool_directly(project.id, [record("waits")], writers=["db"])
    tasks.configure(bound.replace(database_url="postgresql://nobody@127.0.0.1:1/none"))
    with caplog.at_level(logging.ERROR, logger="logflow"):
        drain_all()
    assert "db writer failed" in caplog.text and "quarantined" not in caplog.text
    assert tasks.runtime.spool.depth("db") == 1
    tasks.configure(bound)
    wait_for(lambda: drain_all() or stored_logs(), timeout=10, message="the retry")
    assert [r["message"] for r in stored_logs()] == ["waits"] and quarantine_rows() == []


def test_list_and_show_print_control_characters_escaped(bound, project):
    hostile = record(HOSTILE, metadata={HOSTILE: HOSTILE})
    with models.database.connection_context():
        entry = models.Quarantined.add("db", (project.id, "2026-11-27T12:00:01.000000Z", hostile),
                                       ValueError("refused \x1b]52;c;ZXZpbA==\x07 \x9b \u202e " + HOSTILE))
    environment = {"DATABASE_URL": bound.database_url, "REDIS_URL": bound.redis_url,
                   "LOGFLOW_DATA_DIR": bound.data_dir, "LOGFLOW_LOG_DIR": bound.log_dir}
    listed = CliRunner().invoke(manage.cli, ["quarantine", "list"], env=environment)
    assert listed.exit_code == 0, listed.output
    assert "refused \\x1b]52;c;ZXZpbA==\\x07 \\u009b \\u202e a" in listed.stdout
    assert_no_control_characters(listed.stdout)
    shown = CliRunner().invoke(manage.cli, ["quarantine", "show", str(entry.id)], env=environment)
    assert shown.exit_code == 0, shown.output
    assert_no_control_characters(shown.stdout)
    assert ESCAPED.replace("\\x", "\\u00") in shown.stdout  # JSON's own escapes, and the ones JSON leaves out
    # Still JSON, which reads back as what was quarantined.
    parsed = orjson.loads(shown.stdout)
    assert parsed["record"] == hostile and parsed["error"] == entry.error
