"""Retention: expired rows and daily files go, past days' files are gzipped, on both backends."""
import datetime
import gzip
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import peewee
import pytest

import models
import storage
import tasks
from helpers import drain_all, post_logs, stored_logs, wait_for
from logflow import create_app
from models import ApiKey, Project


TODAY = models.utcnow().date()
# The default retention of the test settings: 30 days, so rows from this midnight on are kept.
CUTOFF = datetime.datetime.combine(TODAY - datetime.timedelta(days=30), datetime.time())


def at(moment):
    """A record timestamp as clients send it."""
    return moment.isoformat() + "Z"


def record(moment, message):
    return {"id": str(uuid.uuid4()), "message": message, "timestamp": at(moment)}


@pytest.fixture
def history(project, key, bound):
    """Two projects with records on either side of the 30-day cutoff, written to rows and files.

    `project` keeps the default 30 days; "archive" keeps 365, so its old records stay.
    Records older than a project keeps are stored as sent only without a past
    window, as a version before LOGFLOW_PAST_WINDOW_DAYS stored them.
    """
    client = create_app(bound.replace(past_window_days=0)).test_client()
    with models.database.connection_context():
        archive = Project.create(name="archive", retention_days=365)
        archive_key = ApiKey.issue(archive)
    moments = {
        "old": CUTOFF - datetime.timedelta(days=10),
        "just expired": CUTOFF - datetime.timedelta(microseconds=1),
        "first kept": CUTOFF,
        "yesterday": datetime.datetime.combine(TODAY - datetime.timedelta(days=1), datetime.time(12)),
        "today": models.utcnow().replace(microsecond=0),
    }
    sent = {name: record(moment, name) for name, moment in moments.items()}
    # More expired rows than one prune batch holds (the test makes batches of 2).
    extra = [record(moments["old"] + datetime.timedelta(seconds=n), "old %d" % n) for n in range(4)]
    assert post_logs(client, key, list(sent.values()) + extra).status_code == 202
    assert post_logs(client, archive_key, [record(moments["old"], "archived")]).status_code == 202
    drain_all()
    return project, archive, moments


def day_files(settings, project_id):
    folder = os.path.join(settings.log_dir, str(project_id))
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def file_name(moment, suffix=".log"):
    return moment.date().isoformat() + suffix


def test_prune_removes_expired_rows_and_files_only(history, bound, monkeypatch):
    project, archive, moments = history
    monkeypatch.setattr(storage, "PRUNE_BATCH_ROWS", 2)
    yesterday_path = os.path.join(bound.log_dir, str(project.id), file_name(moments["yesterday"]))
    with open(yesterday_path, "rb") as handle:
        yesterday_lines = handle.read()

    report = {done["id"]: done for done in tasks.prune(today=TODAY)}

    assert report[project.id]["db"] == {"deleted": 6}
    assert report[archive.id]["db"] == {"deleted": 0}
    assert sorted(row["message"] for row in stored_logs(project.id)) == [
        "first kept", "today", "yesterday"]
    assert [row["message"] for row in stored_logs(archive.id)] == ["archived"]
    # Files by the date in their name: days before the cutoff go, past days are gzipped, today stays.
    assert day_files(bound, project.id) == sorted([
        file_name(moments["first kept"], ".log.gz"), file_name(moments["yesterday"], ".log.gz"),
        file_name(moments["today"])])
    assert report[project.id]["file"] == {"deleted": 2, "compressed": 2}
    assert day_files(bound, archive.id) == [file_name(moments["old"], ".log.gz")]
    with gzip.open(yesterday_path + ".gz", "rb") as handle:
        assert handle.read() == yesterday_lines
    # Nothing is left to do on a second run.
    again = {done["id"]: done for done in tasks.prune(today=TODAY)}
    assert again[project.id]["db"] == {"deleted": 0}
    assert again[project.id]["file"] == {"deleted": 0, "compressed": 0}


def test_a_dry_run_changes_nothing(history, bound):
    project, archive, moments = history
    rows, files = stored_logs(), {name: day_files(bound, name) for name in (project.id, archive.id)}
    report = {done["id"]: done for done in tasks.prune(dry_run=True, today=TODAY)}
    assert report[project.id]["db"] == {"deleted": 6}
    assert report[project.id]["file"] == {"deleted": 2, "compressed": 2}
    assert stored_logs() == rows
    assert {name: day_files(bound, name) for name in (project.id, archive.id)} == files


def test_zero_days_keeps_everything_but_still_compresses(history, bound):
    project, archive, moments = history
    with models.database.connection_context():
        Project.update(retention_days=0).where(Project.id == project.id).execute()
    [done] = [done for done in tasks.prune(today=TODAY) if done["id"] == project.id]
    assert done["db"] == {"deleted": 0} and done["file"] == {"deleted": 0, "compressed": 4}
    assert len(stored_logs(project.id)) == 9


def test_a_retention_stored_before_its_bound_prunes_as_the_bound(history, bound):
    """Versions before the 36,500-day bound stored up to 2**31-1 days; that cutoff lies before year 1."""
    project, archive, moments = history
    with models.database.connection_context():
        Project.update(retention_days=800000).where(Project.id == project.id).execute()
    report = {done["id"]: done for done in tasks.prune(today=TODAY)}
    assert report[project.id]["days"] == 36500 and report[project.id]["db"] == {"deleted": 0}
    # The projects after it are pruned too.
    assert report[archive.id]["file"] == {"deleted": 0, "compressed": 1}
    assert len(stored_logs(project.id)) == 9


def test_the_hourly_task_prunes_the_database_only(history, bound):
    project, archive, moments = history
    files = day_files(bound, project.id)
    due = tasks.prune_hourly.task_class().validate_datetime
    assert due(datetime.datetime(2026, 11, 28, 3, 17)) and not due(datetime.datetime(2026, 11, 28, 3, 18))
    tasks.prune_hourly.call_local()
    assert len(stored_logs(project.id)) == 3
    # Any consumer, on any host, may run the task: the files are left to each host's own thread.
    assert day_files(bound, project.id) == files


def test_each_consumer_process_prunes_its_own_files(history, bound):
    project, archive, moments = history
    tasks.prune_files(today=TODAY)
    assert day_files(bound, project.id) == sorted([
        file_name(moments["first kept"], ".log.gz"), file_name(moments["yesterday"], ".log.gz"),
        file_name(moments["today"])])
    assert day_files(bound, archive.id) == [file_name(moments["old"], ".log.gz")]
    assert len(stored_logs(project.id)) == 9


def test_the_file_pruning_thread_starts_once_per_process_and_runs_at_minute_17(monkeypatch):
    started = []
    monkeypatch.setattr(tasks.ProcessThreads, "started", {})
    monkeypatch.setattr(tasks, "prune_files_hourly", lambda: started.append(threading.get_ident()))
    workers = [threading.Thread(target=tasks.start_file_pruning) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wait_for(lambda: started, timeout=10, message="the file-pruning thread")
    assert len(started) == 1 and tasks.huey._startup["start_file_pruning"] is tasks.start_file_pruning
    at = datetime.datetime(2026, 11, 28, 3, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert tasks.seconds_until_minute(17, at) == 17 * 60
    assert tasks.seconds_until_minute(17, at + 17 * 60) == 3600
    assert tasks.seconds_until_minute(17, at + 17 * 60 + 1.5) == 3600 - 1.5


def test_manage_prune_and_set_retention(history, run):
    project, archive, moments = history
    dry = run("prune", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "acme (id %d, keeps 30 days, from %s): db: would delete 6 rows; file: would delete 2 files," \
        " would compress 2" % (project.id, CUTOFF.date()) in dry.stdout
    assert len(stored_logs(project.id)) == 9

    assert run("set-retention", "archive", "0").stdout == "project archive: kept forever\n"
    assert run("set-retention", "acme", "5").exit_code == 0
    done = run("prune")
    assert done.exit_code == 0, done.output
    assert "acme (id %d, keeps 5 days, from %s): db: deleted 7 rows;" % (
        project.id, TODAY - datetime.timedelta(days=5)) in done.stdout
    assert "archive (id %d, keeps all): db: deleted 0 rows; file: deleted 0 files, compressed 1" % (
        archive.id) in done.stdout
    assert sorted(row["message"] for row in stored_logs(project.id)) == ["today", "yesterday"]
    assert run("set-retention", "acme", "default").stdout == "project acme: 30 days (the default)\n"
    for days in ("-3", "²", "36501", "800000"):  # past about 700,000 days the cutoff is before year 1
        refused = run("set-retention", "acme", days)
        assert refused.exit_code == 2 and "DAYS" in refused.output, refused.output
    assert run("set-retention", "acme", "36500").stdout == "project acme: 36500 days\n"
    with models.database.connection_context():
        assert Project.get(Project.name == "acme").retention_days == 36500
    assert run("prune").exit_code == 0


def test_a_late_record_adds_a_gzip_member(tmp_path):
    path = str(tmp_path / "2026-11-01.log")
    storage.append(path, b'{"n":1}\n')
    assert storage.compress(path)
    storage.append(path, b'{"n":2}\n')  # a record that arrived late, with an old timestamp
    assert storage.compress(path)
    assert not os.path.exists(path) and not storage.compress(path)
    with gzip.open(path + ".gz", "rb") as handle:
        assert handle.read() == b'{"n":1}\n{"n":2}\n'


def test_a_late_record_is_appended_to_the_gz_in_place(tmp_path):
    path = str(tmp_path / "2026-11-01.log")
    storage.append(path, b'{"n":1}\n')
    assert storage.compress(path)
    before = os.stat(path + ".gz")
    storage.append(path, b'{"n":2}\n')
    assert storage.compress(path)
    # The same file grown, not a copy of the whole day renamed over it.
    after = os.stat(path + ".gz")
    assert after.st_ino == before.st_ino and after.st_size > before.st_size
    assert os.listdir(tmp_path) == ["2026-11-01.log.gz"]


def test_a_member_torn_by_a_crash_is_cut_off_by_the_next_run(tmp_path):
    path = str(tmp_path / "2026-11-01.log")
    storage.append(path, b'{"n":1}\n')
    assert storage.compress(path)
    # What a consumer killed while appending the late file leaves: its marker and half a member.
    size = os.path.getsize(path + ".gz")
    (tmp_path / "2026-11-01.log.gz.size").write_text("%d\n" % size)
    with open(path + ".gz", "ab") as torn:
        torn.write(gzip.compress(b'{"n":2}\n')[:12])
    storage.append(path, b'{"n":2}\n')
    assert storage.compress(path)
    with gzip.open(path + ".gz", "rb") as handle:
        assert handle.read() == b'{"n":1}\n{"n":2}\n'
    assert os.listdir(tmp_path) == ["2026-11-01.log.gz"]


def test_a_marker_cut_short_by_a_crash_truncates_nothing(tmp_path):
    path = str(tmp_path / "2026-11-01.log")
    storage.append(path, b'{"n":1}\n')
    assert storage.compress(path)
    # A crash while the marker itself was written: one digit of the size, no newline.
    (tmp_path / "2026-11-01.log.gz.size").write_text(str(os.path.getsize(path + ".gz"))[:1])
    storage.append(path, b'{"n":2}\n')
    assert storage.compress(path)
    with gzip.open(path + ".gz", "rb") as handle:
        assert handle.read() == b'{"n":1}\n{"n":2}\n'


def test_an_expired_day_goes_with_the_marker_a_failed_append_left(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    (folder / "2026-10-01.log.gz").write_bytes(gzip.compress(b'{"n":1}\n'))
    (folder / "2026-10-01.log.gz.size").write_text("20\n")
    done = storage.FileWriter(str(tmp_path)).prune(7, datetime.date(2026, 10, 2), datetime.date(2026, 11, 2))
    assert done["deleted"] == 1 and os.listdir(folder) == []


def test_a_failed_append_leaves_the_gz_as_it_was(tmp_path):
    path = str(tmp_path / "2026-11-01.log")
    storage.append(path, b'{"n":1}\n')
    assert storage.compress(path)
    with open(path + ".gz", "rb") as handle:
        archived = handle.read()
    storage.append(path, os.urandom(1 << 20).hex().encode() + b"\n")
    # A real write failure: the child may not grow any file past 64 KiB (EFBIG, like a full disk).
    compressing = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import resource, signal, sys, storage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            storage.compress(sys.argv[1])
        except OSError as error:
            sys.exit(error.strerror)
        """), path], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, timeout=60)
    assert compressing.returncode == 1 and "too large" in compressing.stderr, compressing.stderr
    with open(path + ".gz", "rb") as handle:
        assert handle.read() == archived
    assert os.path.exists(path)
    assert storage.compress(path)
    with gzip.open(path + ".gz", "rb") as handle:
        assert handle.read().startswith(b'{"n":1}\n')


def waiting_for_flock(path):
    """True once some process waits in /proc/locks for the flock of path's current file."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return any("->" in line and line.split()[6].endswith(":%d" % inode) for line in locks)


def test_a_writer_waiting_while_its_file_is_compressed_appends_to_a_new_file(tmp_path):
    path = str(tmp_path / "2026-11-01.log")
    storage.append(path, b'{"n":1}\n')
    # The test compresses with the lock held, as compress() does, while a writer waits for it.
    holder = storage.lock_file(path, os.O_RDWR)
    writer = threading.Thread(target=storage.append, args=(path, b'{"n":2}\n'))
    writer.start()
    try:
        wait_for(lambda: waiting_for_flock(path), timeout=10, message="the writer to wait for the lock")
        storage.compress_locked(holder, path)
    finally:
        os.close(holder)
    writer.join(timeout=30)
    assert not writer.is_alive()
    with gzip.open(path + ".gz", "rb") as handle:
        assert handle.read() == b'{"n":1}\n'
    with open(path, "rb") as handle:
        assert handle.read() == b'{"n":2}\n'


class OldProject(peewee.Model):
    """The projects table as it was before retention_days."""

    name = peewee.CharField(unique=True)
    is_active = peewee.BooleanField(default=True)
    storage = peewee.CharField(null=True)
    rate_limit = peewee.IntegerField(null=True)
    created_at = peewee.DateTimeField(default=models.utcnow)

    class Meta:
        database = models.database
        table_name = "projects"


def test_create_tables_adds_missing_columns_to_an_existing_table(bound, monkeypatch):
    with models.database.connection_context():
        models.database.drop_tables(models.MODELS)
        OldProject.create_table()
        OldProject.create(name="before")
    # A spy on the real catalogue query: each start-up reads a table's columns once, not once per field.
    tables_read = []
    get_columns = models.database.obj.get_columns

    def reading(table, *args):
        tables_read.append(table)
        return get_columns(table, *args)
    monkeypatch.setattr(models.database.obj, "get_columns", reading)
    models.create_tables()
    assert tables_read.count("projects") == 1
    models.create_tables()
    with models.database.connection_context():
        assert "retention_days" in {column.name for column in models.database.get_columns("projects")}
        assert Project.get(name="before").retention(30) == 30
