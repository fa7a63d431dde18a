"""End to end: gunicorn and huey_consumer as real processes on PostgreSQL and Redis, fed over HTTP."""
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

import spool
import spool_redis
from helpers import file_records, wait_for
from processes import (LEASE_SECONDS, ROOT, Process, Sender, assert_stored_once, free_port,
                       make_service, post, query, tally, unique_database_name)


@pytest.fixture
def service(tmp_path, postgres_server, redis_server):
    """Fresh database, flushed Redis, tmp folders, one project; every process stopped at the end."""
    svc = make_service(tmp_path, postgres_server.create_database(unique_database_name()),
                       redis_server.url)
    yield svc
    svc.close()


def test_formats_reach_postgres_and_files(service):
    """A JSON object, a JSON array, NDJSON and gzip bodies all end up in both writers."""
    service.start_web()
    consumer = service.start_consumer()
    single = {"id": str(uuid.uuid4()), "message": "single", "level": "warning",
              "metadata": {"user": "ada"}, "region": "eu"}
    array = [{"id": str(uuid.uuid4()), "msg": "array %d" % n, "severity": 50, "n": n} for n in range(100)]
    lines = [{"id": str(uuid.uuid4()), "message": "ndjson %d" % n, "level": "fatal"} for n in range(10)]
    zipped = [{"id": str(uuid.uuid4()), "message": "gzip %d" % n} for n in range(10)]
    bodies = [
        (json.dumps(single).encode(), "application/json", None, 1),
        (json.dumps(array).encode(), "application/json", None, 100),
        ("\n".join(map(json.dumps, lines)).encode() + b"\n", "application/x-ndjson", None, 10),
        (gzip.compress(json.dumps(zipped).encode()), "application/json", "gzip", 10),
    ]
    for body, content_type, encoding, count in bodies:
        status, reply = post(service.base_url, service.key, body, content_type, encoding)
        assert (status, reply["accepted"], reply["rejected"]) == (202, count, 0), reply

    ids = {record["id"] for record in [single, *array, *lines, *zipped]}
    service.wait_delivered(ids, consumer)
    assert assert_stored_once(service, ids) == 0

    rows = {row[0]: row[1:] for row in query(service.db_url,
                                             "SELECT id::text, level, message, metadata FROM logs")}
    files = {record["id"]: record for record in file_records(service.log_dir)}
    # Level names and pino numbers map onto LogFlow's levels; unknown top-level fields join metadata.
    expected = [(single["id"], "WARN", "single", {"user": "ada", "region": "eu"}),
                (array[7]["id"], "ERROR", "array 7", {"n": 7}),
                (lines[0]["id"], "CRITICAL", "ndjson 0", {}),
                (zipped[3]["id"], "INFO", "gzip 3", {})]
    for record_id, level, message, metadata in expected:
        assert rows[record_id] == (level, message, metadata)
        assert (files[record_id]["level"], files[record_id]["message"],
                files[record_id]["metadata"]) == (level, message, metadata)


def test_consumer_sigkill_mid_stream_loses_nothing(service):
    """Three SIGKILLs of the consumer while records stream in: every accepted record is stored."""
    service.start_web()
    consumer = service.start_consumer()
    sender = Sender(service)
    sender.start()
    for _ in range(3):
        since_restart = service.db_count()
        # Growth since the restart means this consumer is writing: the kill lands mid-stream.
        wait_for(lambda: consumer.check_alive() or service.db_count() > since_restart,
                 timeout=30, message="the consumer to write rows")
        assert sender.is_alive(), "the sender finished before the consumer could be killed"
        consumer.popen.kill()  # SIGKILL: no handler runs, the batches in hand are left leased
        assert consumer.popen.wait(timeout=10) == -signal.SIGKILL
        consumer = service.start_consumer()
    accepted = sender.finish()

    started = time.monotonic()
    service.wait_delivered(accepted, consumer)
    waited = time.monotonic() - started
    duplicates = assert_stored_once(service, accepted)
    # A killed consumer may have written a batch without acknowledging it: it is redelivered,
    # the DB skips the ids, the file writer repeats those lines.
    result = tally(service, "consumer SIGKILL mid-stream x3", sender.sent, accepted)
    assert (result.lost, result.db_duplicates, result.file_duplicates) == (0, 0, duplicates)
    print("SIGKILL test: %d requests, %d records, %d duplicate file lines, all stored %.1f s"
          " after the sender stopped" % (sender.requests, len(accepted), duplicates, waited))


def test_consumer_sigterm_stops_gracefully(service):
    """SIGTERM lets the consumer finish its batches; a restarted one writes the rest, once each."""
    service.start_web()
    consumer = service.start_consumer()
    sender = Sender(service)
    sender.start()
    wait_for(lambda: consumer.check_alive() or service.db_count() > 0, timeout=30,
             message="the consumer to write rows")
    consumer.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: consumer.popen.poll() is not None, timeout=30, message="the consumer to exit")
    assert consumer.popen.returncode == 0, consumer.tail()
    # Records keep arriving while no consumer runs; they must wait in the spool.
    stopped_at, requests_at_stop = service.db_count(), sender.requests
    wait_for(lambda: sender.requests > requests_at_stop + 20, timeout=30,
             message="more requests while the consumer is down")
    assert sender.is_alive() and service.db_count() == stopped_at
    consumer = service.start_consumer()
    accepted = sender.finish()

    service.wait_delivered(accepted, consumer)
    assert len(accepted) > stopped_at
    assert assert_stored_once(service, accepted) == 0
    result = tally(service, "consumer graceful SIGTERM", sender.sent, accepted)
    assert (result.lost, result.db_duplicates, result.file_duplicates) == (0, 0, 0)


def test_consumer_says_where_it_works_when_it_starts_and_hides_passwords(service):
    """One line at start, even with --quiet: workers, queue and writers, with no password in it."""
    at = service.db_url.index("@")
    service.env["DATABASE_URL"] = service.db_url[:at] + ":hunter2-not-shown" + service.db_url[at:]
    consumer = service.start_consumer()
    wait_for(lambda: consumer.check_alive() or consumer.count("consumer started"), timeout=30,
             message="the consumer's start line")
    line = next(line for line in consumer.text().splitlines() if "consumer started" in line)
    redis_place = service.env["REDIS_URL"]
    # Where, never who: the URL's user is left out with its password (tasks.without_password).
    user = service.db_url.partition("://")[2].partition("@")[0]
    assert line.endswith("consumer started: 4 thread workers; queue %s; db writer to %s; file writer to %s"
                         % (redis_place, service.db_url.replace(user + "@", ""), service.log_dir)), line
    # The consumer does connect with that password (trust auth ignores it): it stores a record.
    service.start_web()
    record_id = str(uuid.uuid4())
    post(service.base_url, service.key, json.dumps({"id": record_id, "message": "hi"}).encode())
    service.wait_delivered({record_id}, consumer)
    assert "hunter2" not in consumer.text()


def test_a_dead_consumers_batches_return_as_their_leases_run_out(service):
    """Batches left leased at different times by a dead consumer are written without waiting for the sweep."""
    dead = spool_redis.RedisSpool(service.env["REDIS_URL"], LEASE_SECONDS)
    ids = set()
    for number in range(3):
        record_id = str(uuid.uuid4())
        ids.add(record_id)
        record = {"id": record_id, "level": "INFO", "message": "orphan %d" % number, "metadata": {},
                  "timestamp": "2026-01-01T00:00:00.000000Z"}
        dead.push(spool.encode(1, "2026-01-01T00:00:00.000000Z", [record]), ["db", "file"], 1)
        # Claimed one by one, as a consumer that then died would have: the leases end apart.
        assert dead.claim("db", 1 << 20) and dead.claim("file", 1 << 20)
        time.sleep(0.5)  # staggers the lease deadlines; not synchronisation
    consumer = service.start_consumer()
    started = time.monotonic()
    # The sweep would take 60 s; lease expiry alone must bring them back within seconds.
    wait_for(lambda: consumer.check_alive() or service.delivered(ids),
             timeout=LEASE_SECONDS + 15, interval=0.2, message="the orphaned batches")
    assert assert_stored_once(service, ids) == 0
    print("orphaned batches stored %.1f s after the consumer started" % (time.monotonic() - started))


def test_dev_mode_procfile_runs_the_whole_service_on_sqlite(tmp_path):
    """`honcho start` with no configuration: web and consumer on SQLite, records in the db and files."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PYTHONUNBUFFERED="1", LOGFLOW_DATA_DIR=str(tmp_path / "data"),
               LOGFLOW_LOG_DIR=str(tmp_path / "logs"), LOGFLOW_STORAGE="db,file")
    created = subprocess.run([sys.executable, "manage.py", "add-project", "dev"], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True)
    key = created.stdout.strip()
    port = free_port()
    honcho = Process("honcho", [sys.executable, "-m", "honcho", "start", "-p", str(port)],
                     env, tmp_path / "honcho.log")
    try:
        base_url = "http://127.0.0.1:%d" % port

        def answers():
            honcho.check_alive()
            try:
                return post(base_url, key, json.dumps(records).encode())[0] == 202
            except OSError:
                return False
        records = [{"id": str(uuid.uuid4()), "message": "dev %d" % n} for n in range(20)]
        wait_for(answers, timeout=60, interval=0.2, message="honcho's web process")
        ids = {record["id"] for record in records}

        def stored():
            connection = sqlite3.connect(tmp_path / "data" / "logflow.db")
            try:
                rows = connection.execute("SELECT message FROM logs").fetchall()
            finally:
                connection.close()
            return len(rows) == len(ids) and {r["id"] for r in file_records(str(tmp_path / "logs"))} == ids
        wait_for(stored, timeout=30, interval=0.2, message="records in SQLite and the files")
        # Both halves say they started, the consumer where it works (honcho prefixes "worker.1 |").
        assert "consumer started: 4 thread workers; queue %s; db writer to %s; file writer to %s" % (
            tmp_path / "data" / "spool.db", tmp_path / "data" / "logflow.db", tmp_path / "logs") in honcho.text()
        honcho.popen.send_signal(signal.SIGINT)
        honcho.popen.wait(timeout=30)
    finally:
        honcho.stop()
        print(honcho.tail())
