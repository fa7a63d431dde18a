"""manage.py tail on both backends: what it prints, its filters, and --follow with logs written late."""
import datetime
import logging
import os
import signal
import sys

import orjson
import pytest
from click.testing import CliRunner

import manage
import models
import query
from helpers import drain_all, post_logs, wait_for
from processes import Process
from test_manage import ESCAPED, HOSTILE, assert_no_control_characters


@pytest.fixture
def environment(bound):
    """The variables that point manage.py at the test's backend."""
    return {"DATABASE_URL": bound.database_url, "REDIS_URL": bound.redis_url,
            "LOGFLOW_DATA_DIR": bound.data_dir, "LOGFLOW_LOG_DIR": bound.log_dir}


@pytest.fixture
def tail(environment, project):
    """Run `manage.py tail acme ARGS...` to completion; returns the click Result."""
    def tail(*arguments, color=False):
        return CliRunner().invoke(manage.cli, ["tail", "acme", *arguments], env=environment, color=color)
    return tail


@pytest.fixture
def stored(client, key):
    """30 logs a second apart: every third an ERROR about a disk, the others INFO."""
    post_logs(client, key, [
        {"message": "disk %d full" % n if n % 3 == 0 else "request %d" % n,
         "level": "error" if n % 3 == 0 else "info", "timestamp": "2026-11-27T10:00:%02dZ" % n,
         "metadata": {"n": n} if n % 2 else {}} for n in range(30)])
    drain_all()


def test_prints_the_newest_logs_oldest_first_one_per_line(tail, stored):
    result = tail("-n", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        '2026-11-27T10:00:27.000000Z ERROR    disk 27 full  {"n":27}',
        "2026-11-27T10:00:28.000000Z INFO     request 28",
        '2026-11-27T10:00:29.000000Z INFO     request 29  {"n":29}',
    ]
    assert len(tail().stdout.splitlines()) == 20


def test_pages_cut_short_by_their_bytes_still_give_the_lines_asked_for(environment, project, stored, caplog):
    """LOGFLOW_MAX_PAGE_BYTES applies to tail's reads too, and a page it cuts short does not cut --lines short."""
    environment["LOGFLOW_MAX_PAGE_BYTES"] = "700"  # about three of these logs (200 bytes each and their text)
    with caplog.at_level(logging.DEBUG, logger="peewee"):
        result = CliRunner().invoke(manage.cli, ["tail", "acme", "-n", "7"], env=environment)
    assert result.exit_code == 0, result.output
    assert [line.split(None, 2)[2].split("  ")[0] for line in result.stdout.splitlines()] == [
        "disk %d full" % n if n % 3 == 0 else "request %d" % n for n in range(23, 30)]
    # Three pages of keys, each followed by its rows.
    assert sum('"received_at" FROM "logs"' in record.getMessage() for record in caplog.records) == 3


def test_the_level_is_coloured_on_a_terminal(tail, stored):
    line = tail("-n", "1", "--level", "ERROR", color=True).stdout
    assert "\x1b[31mERROR   \x1b[0m disk 27 full" in line


@pytest.mark.parametrize("color", [False, True])
def test_control_characters_are_shown_escaped_never_sent_to_the_terminal(client, key, tail, color):
    metadata = {"k" + HOSTILE: HOSTILE, "n": 1}
    post_logs(client, key, {"message": HOSTILE, "level": "error", "timestamp": "2026-11-27T10:00:00Z",
                            "metadata": metadata})
    drain_all()
    result = tail("-n", "1", color=color)
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    level = "\x1b[31mERROR   \x1b[0m" if color else "ERROR   "  # the colour is tail's own, on a terminal
    assert line.startswith("2026-11-27T10:00:00.000000Z %s %s  {" % (level, ESCAPED)), repr(line)
    assert_no_control_characters(line.replace(level, ""))
    # The metadata stays JSON, which reads back as what was sent.
    assert orjson.loads(line.split(ESCAPED + "  ", 1)[1]) == metadata


@pytest.mark.parametrize("arguments, expected", [
    (["--level", "ERROR", "-n", "2"], ["disk 24 full", "disk 27 full"]),
    (["--level", "warn,error", "--level", "critical", "-n", "1"], ["disk 27 full"]),
    (["--min-level", "ERROR", "--grep", "DISK 2"], ["disk 21 full", "disk 24 full", "disk 27 full"]),
    (["--grep", "request 1", "-n", "100"], ["request 1"] + ["request %d" % n for n in range(10, 20) if n % 3]),
    (["--since", "2026-11-27T10:00:05Z", "--level", "error"],
     ["disk %d full" % n for n in range(6, 30, 3)]),
])
def test_filters(tail, stored, arguments, expected):
    result = tail(*arguments)
    assert result.exit_code == 0, result.output
    assert [line.split(None, 2)[2].split("  ")[0] for line in result.stdout.splitlines()] == expected


def test_since_prints_every_log_from_then_on_not_only_the_last_lines(tail, stored):
    result = tail("--since", "1795773600")  # 2026-11-27T10:00:00Z as epoch seconds
    assert len(result.stdout.splitlines()) == 30


@pytest.mark.parametrize("arguments, error", [
    (["--since", "yesterday"], "since"), (["--level", "loud"], "level"), (["--min-level", "x"], "min_level"),
])
def test_bad_options_fail_naming_them(tail, arguments, error):
    result = tail(*arguments)
    assert result.exit_code == 1 and error in result.stderr and result.stdout == ""


def test_an_unknown_project_fails(environment, bound):
    result = CliRunner().invoke(manage.cli, ["tail", "nope"], env=environment)
    assert result.exit_code == 1 and "no project" in result.stderr


def timestamp(seconds_ago):
    return (models.utcnow() - datetime.timedelta(seconds=seconds_ago)).isoformat() + "Z"


def test_following_shows_each_log_once_including_logs_written_late(client, key, project):
    post_logs(client, key, [{"message": "recent", "timestamp": timestamp(5)},
                            {"message": "old", "timestamp": timestamp(600)}])
    drain_all()
    seen = {}
    everything = query.parse_filter([])

    def poll():
        with models.database.connection_context():
            floor = models.utcnow() - datetime.timedelta(seconds=60)
            return [log.message for log in query.logs_since(project.id, everything, floor, seen)]
    assert poll() == ["recent"]
    assert poll() == []
    # A log written after a newer one, timestamped before it, still inside the lookback.
    post_logs(client, key, [{"message": "late", "timestamp": timestamp(30)},
                            {"message": "backfilled", "timestamp": timestamp(3600)},
                            {"message": "new", "timestamp": timestamp(0)}])
    drain_all()
    assert poll() == ["late", "new"]
    assert poll() == []


def test_following_reads_windows_larger_than_a_page(client, key, project):
    for start in (0, 600):
        post_logs(client, key, [{"message": "n%04d" % n, "timestamp": timestamp(20 - n / 100)}
                                for n in range(start, start + 600)])
    drain_all()
    seen = {}
    with models.database.connection_context():
        floor = models.utcnow() - datetime.timedelta(seconds=60)
        shown = [log.message for log in query.logs_since(project.id, query.parse_filter([]), floor, seen)]
    assert shown == ["n%04d" % n for n in range(1200)] and len(seen) == 1200


def test_follow_prints_new_logs_until_interrupted(client, key, environment, tmp_path):
    post_logs(client, key, {"message": "before"})
    drain_all()
    process = Process("tail", [sys.executable, "manage.py", "tail", "acme", "--follow"],
                      dict(os.environ, **environment), str(tmp_path / "tail.out"))
    try:
        wait_for(lambda: "before" in process.text(), message="the existing log")
        post_logs(client, key, [{"message": "during %d" % n} for n in range(3)])
        drain_all()
        wait_for(lambda: process.count("during") == 3, message="the new logs")
        process.popen.send_signal(signal.SIGINT)
        assert process.popen.wait(timeout=30) == 0
    finally:
        process.stop()
    assert process.count("before") == 1 and "Traceback" not in process.text()


def test_follow_prints_only_the_last_lines_then_logs_new_since_it_started(client, key, environment, tmp_path):
    post_logs(client, key, [{"message": "older %d" % n, "timestamp": timestamp(30 - n)} for n in range(3)]
              + [{"message": "last", "timestamp": timestamp(10)}])
    drain_all()
    process = Process("tail", [sys.executable, "manage.py", "tail", "acme", "-n", "1", "--follow"],
                      dict(os.environ, **environment), str(tmp_path / "tail.out"))
    try:
        wait_for(lambda: "last" in process.text(), message="the last log")
        # Written after tail started, timestamped before the log it printed: new, so shown.
        post_logs(client, key, [{"message": "late", "timestamp": timestamp(20)}, {"message": "new"}])
        drain_all()
        wait_for(lambda: "new" in process.text(), message="the new logs")
    finally:
        process.stop()
    assert [line.split(None, 2)[2] for line in process.text().splitlines()] == ["last", "late", "new"]


def test_printing_a_long_range_remembers_only_the_lookback_window(client, key, project):
    for start in (0, 750):
        post_logs(client, key, [{"message": "old %d" % n, "timestamp": timestamp(3600 - n)}
                                for n in range(start, start + 750)])
    post_logs(client, key, {"message": "recent", "timestamp": timestamp(5)})
    drain_all()
    seen = {}
    since = query.parse_filter([("since", timestamp(7200))])
    with models.database.connection_context():
        floor = models.utcnow() - datetime.timedelta(seconds=60)
        shown = [log.message for log in query.logs_from(project.id, since, floor, seen)]
        assert shown == ["old %d" % n for n in range(1500)] + ["recent"]
        assert [log.message for log in models.Log.select().where(models.Log.id.in_(list(seen)))] == ["recent"]
        assert len(list(query.logs_from(project.id, since, floor))) == 1501


def test_follow_after_since_prints_each_log_once(client, key, environment, tmp_path):
    post_logs(client, key, [{"message": "hour ago", "timestamp": timestamp(3600)},
                            {"message": "just now", "timestamp": timestamp(5)}])
    drain_all()
    process = Process("tail", [sys.executable, "manage.py", "tail", "acme", "--since", timestamp(7200), "--follow"],
                      dict(os.environ, **environment), str(tmp_path / "tail.out"))
    try:
        wait_for(lambda: "just now" in process.text(), message="the stored logs")
        post_logs(client, key, {"message": "new"})
        drain_all()
        wait_for(lambda: "new" in process.text(), message="the new log")
    finally:
        process.stop()
    assert [line.split(None, 2)[2] for line in process.text().splitlines()] == ["hour ago", "just now", "new"]
