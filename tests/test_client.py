"""client.py: LogFlowHandler against a live LogFlow served over real HTTP, on both backends."""
import contextlib
import datetime
import inspect
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

import client
import models
from helpers import drain_all, post_logs, serve, stored_logs, wait_for
from logflow import create_app
from processes import ROOT


@contextlib.contextmanager
def serving(settings):
    """LogFlow with these settings on a free port of 127.0.0.1, in a thread; yields the URL of POST /logs."""
    with serve(create_app(settings)) as base_url:
        yield base_url + "/logs"


@pytest.fixture
def url(bound):
    with serving(bound) as url:
        yield url


@pytest.fixture
def ship():
    """make(url, key, **options): a logger whose records go only to a new LogFlowHandler; closed at the end."""
    made = []

    def make(url, key, **options):
        handler = client.LogFlowHandler(url, key, **options)
        logger = logging.getLogger("shipped.%s" % uuid.uuid4().hex)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, handler

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)
        handler.close()


def stored(count):
    """Drain the spool into the database until it holds `count` rows; returns them."""
    def check():
        drain_all()
        rows = stored_logs()
        return rows if len(rows) >= count else None
    return wait_for(check, message="%d stored logs" % count)


def test_records_are_stored_with_level_time_context_extra_fields_and_traceback(url, key, project, ship):
    with models.database.connection_context():
        # Kept forever, so that a record from 2023 keeps its time (the past window follows the retention).
        models.Project.update(retention_days=0).execute()
    logger, handler = ship(url, key)
    logger.warning("disk %s is %d%% full", "/var", 91,
                   extra={"user_id": 42, "tags": ("a", "b"), "thing": object(), "ratio": float("nan")})
    warning_line = inspect.currentframe().f_lineno - 2
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("division failed")
    logger.log(25, "a custom level")
    logger.handle(logging.makeLogRecord({"name": logger.name, "msg": "from the past", "levelno": 50,
                                         "created": 1700000000.25}))
    assert handler.flush(timeout=30)
    assert handler.stats == {"sent": 4, "dropped": 0, "failed": 0, "retries": 0}

    rows = {row["message"]: row for row in stored(4)}
    assert len({row["id"] for row in rows.values()}) == 4
    # Time-ordered ids, as LogFlow's own (records.random_uuid).
    assert {uuid.UUID(row["id"]).version for row in rows.values()} == {7}
    assert {row["project"] for row in rows.values()} == {project.id}
    warning = rows["disk /var is 91% full"]
    assert warning["level"] == "WARN"
    metadata = warning["metadata"]
    assert (metadata["user_id"], metadata["tags"], metadata["ratio"]) == (42, ["a", "b"], "nan")
    assert metadata["thing"].startswith("<object object at")
    assert (metadata["logger"], metadata["module"], metadata["line"]) == (logger.name, "test_client", warning_line)
    assert metadata["function"] == "test_records_are_stored_with_level_time_context_extra_fields_and_traceback"
    assert metadata["thread"] == threading.current_thread().name and "exception" not in metadata

    failure = rows["division failed"]
    assert failure["level"] == "ERROR"
    assert failure["metadata"]["exception"].startswith("Traceback (most recent call last):")
    assert failure["metadata"]["exception"].endswith("ZeroDivisionError: division by zero")
    assert rows["a custom level"]["level"] == "INFO"
    past = rows["from the past"]
    assert past["level"] == "CRITICAL"
    assert past["timestamp"] == datetime.datetime(2023, 11, 14, 22, 13, 20, 250000)


def test_a_full_queue_is_retried_after_its_retry_after_until_it_drains(bound, key, ship):
    settings = bound.replace(max_queue=5, retry_after_seconds=1)
    with serving(settings) as url:
        filler = post_logs(create_app(settings).test_client(), key, [{"message": "filler"}] * 5)
        assert filler.status_code == 202
        logger, handler = ship(url, key, flush_interval=0.05)
        for n in range(3):
            logger.info("while full %d", n)
        # Each 503 says Retry-After: 1; two retries mean two refusals, and nothing was given up.
        wait_for(lambda: handler.stats["retries"] >= 2, message="the handler to retry")
        assert handler.stats["sent"] == handler.stats["failed"] == 0
        drain_all()
        rows = stored(8)
        assert handler.flush(timeout=30)
    assert handler.stats == {"sent": 3, "dropped": 0, "failed": 0, "retries": handler.stats["retries"]}
    assert sorted(row["message"] for row in rows) == ["filler"] * 5 + ["while full %d" % n for n in range(3)]


def test_a_bad_key_is_not_retried_and_reported_once(url, ship, capsys):
    logger, handler = ship(url, "lf_" + "x" * 43, flush_interval=3600)
    logger.info("one")
    logger.info("two")
    # False: nothing was delivered, though nothing is left to send either.
    assert not handler.flush(timeout=30)
    assert handler.stats == {"sent": 0, "dropped": 0, "failed": 2, "retries": 0}
    logger.info("three")
    assert not handler.flush(timeout=30)
    assert handler.stats == {"sent": 0, "dropped": 0, "failed": 3, "retries": 0}
    errors = capsys.readouterr().err
    assert errors.count("LogFlowHandler: LogFlow refused 2 records with 401") == 1
    assert errors.count("LogFlowHandler:") == 1
    drain_all()
    assert stored_logs() == []


def test_records_the_server_rejects_are_counted_as_failed_not_retried(url, key, ship, capsys):
    logger, handler = ship(url, key, flush_interval=3600)
    logger.info("x" * 70000)
    logger.info("short enough")
    assert not handler.flush(timeout=30)
    assert handler.stats == {"sent": 1, "dropped": 0, "failed": 1, "retries": 0}
    assert "LogFlowHandler: LogFlow rejected 1 of 2 records" in capsys.readouterr().err
    assert [row["message"] for row in stored(1)] == ["short enough"]


def test_a_full_buffer_drops_the_oldest_records(url, key, ship):
    logger, handler = ship(url, key, capacity=5, flush_interval=3600)
    for n in range(20):
        logger.info("record %d", n)
    assert handler.stats["dropped"] == 15
    assert not handler.flush(timeout=30)
    assert sorted(row["message"] for row in stored(5)) == ["record %d" % n for n in range(15, 20)]
    assert handler.stats["sent"] == 5
    # Each loss makes one flush False: the next one answers for what was logged since.
    logger.info("record 20")
    assert handler.flush(timeout=30)
    assert handler.stats == {"sent": 6, "dropped": 15, "failed": 0, "retries": 0}


def test_batches_leave_when_full_by_count_or_by_size(url, key, ship):
    # With an hour's flush interval, only the count or size bound sends anything before flush().
    by_count, counted = ship(url, key, batch_size=10, flush_interval=3600)
    by_size, sized = ship(url, key, batch_bytes=2000, flush_interval=3600)
    for n in range(35):
        by_count.info("count %d", n)
    for n in range(10):
        by_size.info("size %d %s", n, "x" * 600)
    wait_for(lambda: counted.stats["sent"] == 30, message="three batches of 10")
    # Each record is over 600 bytes: what stays behind is under 2000 bytes.
    wait_for(lambda: sized.stats["sent"] >= 8, message="batches of at most 2000 bytes")
    assert counted.flush(timeout=30) and sized.flush(timeout=30)
    assert (counted.stats["sent"], sized.stats["sent"]) == (35, 10)
    assert len(stored(45)) == 45


def test_racing_first_emits_start_one_sender_and_lose_nothing(url, key, ship):
    # logger calls go through handle(), whose lock serialises emit(); code calling emit() itself does not.
    handlers = []
    for attempt in range(5):
        before = set(threading.enumerate())
        logger, handler = ship(url, key, flush_interval=3600)
        handlers.append(handler)
        barrier = threading.Barrier(8)

        def emit(n):
            barrier.wait()
            handler.emit(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "racing %d %d",
                                           (attempt, n), None))
        threads = [threading.Thread(target=emit, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        senders = [thread for thread in set(threading.enumerate()) - before if thread.name == "LogFlowHandler"]
        assert len(senders) == 1
        assert handler.flush(timeout=30)
    assert [handler.stats["sent"] for handler in handlers] == [8] * 5
    assert sorted(row["message"] for row in stored(40)) == sorted(
        "racing %d %d" % (attempt, n) for attempt in range(5) for n in range(8))


def unreachable_url():
    """A URL on a port of 127.0.0.1 where nothing listens."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d/logs" % unused.getsockname()[1]


def test_close_gives_up_on_an_unreachable_server_within_its_timeout(ship):
    logger, handler = ship(unreachable_url(), "lf_unused", close_timeout=1,
                           backoff_base=0.05)
    logger.error("nobody listens")
    handler.close()
    assert not handler.thread.is_alive()
    assert handler.stats["failed"] == 1 and handler.stats["sent"] == 0
    logger.error("after close")
    assert handler.stats["dropped"] == 1


def test_a_long_outage_keeps_the_batch_however_many_attempts_it_takes(ship):
    # A tiny cap makes a thousand attempts quick; with the defaults they take some 8 hours.
    logger, handler = ship(unreachable_url(), "lf_unused", backoff_base=0.5, backoff_max=0.0001)
    logger.error("waiting out the outage")
    wait_for(lambda: handler.stats["retries"] > 1100, timeout=60, message="1,100 attempts")
    # The 1,024th attempt's delay overflowed, and the batch was counted failed and dropped.
    assert handler.stats["failed"] == 0 and handler.stats["sent"] == 0
    assert handler.thread.is_alive()


EXITING_SCRIPT = """
import logging, os, sys
sys.path.insert(0, %r)
import client
logging.getLogger().addHandler(client.LogFlowHandler(sys.argv[1], os.environ["LOGFLOW_KEY"],
                                                     flush_interval=3600, close_timeout=1))
logging.getLogger().setLevel(logging.INFO)
for n in range(int(sys.argv[2])):
    logging.info("exiting %%d", n)
""" % ROOT


def run_exiting_script(url, key, count):
    """Run a script that logs `count` records through a LogFlowHandler and exits at once."""
    # -S leaves site-packages out: the client must import with the standard library alone.
    return subprocess.run([sys.executable, "-S", "-c", EXITING_SCRIPT, url, str(count)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, LOGFLOW_KEY=key))


def test_a_process_exiting_right_after_logging_sends_everything(url, key):
    done = run_exiting_script(url, key, 300)
    assert (done.returncode, done.stderr) == (0, "")
    assert sorted(row["message"] for row in stored(300)) == sorted("exiting %d" % n for n in range(300))


def test_a_process_exits_despite_an_unreachable_server():
    # The subprocess timeout is the bound: close() must give up after its close_timeout of 1 s.
    done = run_exiting_script(unreachable_url(), "lf_unused", 5)
    assert done.returncode == 0
    assert done.stderr.count("LogFlowHandler: gave up sending 5 records at close") == 1


def section(path, heading):
    """The text under a `## heading` of a Markdown file of this repository, without backticks."""
    with open(os.path.join(ROOT, path)) as handle:
        text = handle.read()
    return text.split(heading + "\n", 1)[1].split("\n## ", 1)[0].replace("`", "")


def test_the_docs_name_what_the_client_retries():
    # Two places describe the retries: the module and its section of docs/shippers.md (which once said 429/503 only).
    assert client.RETRY_STATUSES == {408, 429, 500, 502, 503, 504}
    claim = "retries 408, 429, 5xx and network errors"
    assert claim in " ".join(client.__doc__.split())
    assert claim in section("docs/shippers.md", "## Python")
