"""Fault injection with real processes: Redis stopped or killed, PostgreSQL down, the log disk full.

Each test runs gunicorn and huey_consumer as the Procfile does, sends records
over HTTP while it breaks something, repairs it, and prints one summary line

    scenario | sent N | accepted N | stored N | lost N | duplicated N db rows, N file lines

("accepted": records that got a 202; a 503 or no answer at all is not
accepted). Whatever the fault, lost must be 0: every accepted record ends up
in the logs table exactly once and in the daily files. docs/reliability.md
lists the last measured numbers; run one with
`python3 -m pytest -q -s tests/test_faults.py::test_x`.

Tests that break a server start their own (services.start_redis /
start_postgres), so the session's shared servers are never disturbed.
"""
import json
import os
import re
import socket
import subprocess
import time
import uuid

import pytest
import redis

import services
from helpers import file_records, wait_for
from processes import DELIVERY_TIMEOUT, Sender, make_service, post, send, tally, unique_database_name

# How long PostgreSQL stays down under load. The issue asks for "a minute";
# it dominates this file's run time (LOGFLOW_TEST_PG_OUTAGE_SECONDS shortens it for a quick try).
PG_OUTAGE_SECONDS = float(os.environ.get("LOGFLOW_TEST_PG_OUTAGE_SECONDS", "60"))
# How long Redis stays down once the API has answered 503 a few times.
REDIS_OUTAGE_SECONDS = 5
RETRY_AFTER_SECONDS = 2


def unavailable(error):
    """Skip without the servers on a developer's machine; fail in CI, where they must exist."""
    if os.environ.get("CI"):
        pytest.fail(str(error))
    pytest.skip(str(error))


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, persisting with AOF (appendfsync always), stopped at the end."""
    try:
        server = services.start_redis(str(tmp_path / "redis"), appendonly=True)
    except services.ServiceUnavailable as error:
        unavailable(error)
    yield server
    server.stop()


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL cluster of this test's own, stopped at the end (its files go with the session's)."""
    try:
        server = services.start_postgres(str(tmp_path / "pg"))
    except services.ServiceUnavailable as error:
        unavailable(error)
    yield server
    server.stop(mode="immediate")


def close_after(request, service):
    request.addfinalizer(service.close)
    return service


def queued_requests(redis_url, writer):
    """Requests waiting in a writer's spool queue (not yet claimed)."""
    with redis.Redis.from_url(redis_url) as client:
        return client.llen("logflow:%s:queue" % writer)


def test_redis_stopped_while_clients_send(request, tmp_path, postgres_server, own_redis):
    """Redis stops under load: 503 + Retry-After, /readyz 503; it comes back: the API recovers alone."""
    service = close_after(request, make_service(
        tmp_path, postgres_server.create_database(unique_database_name("faults")), own_redis.url,
        LOGFLOW_RETRY_AFTER_SECONDS=RETRY_AFTER_SECONDS))
    web = service.start_web()
    consumer = service.start_consumer()
    sender = Sender(service, per_request=20, interval=0.02, max_seconds=120, timeout=10)
    sender.start()
    wait_for(lambda: consumer.check_alive() or (len(sender.accepted) >= 1000 and service.db_count() > 0),
             timeout=30, message="records accepted and written before the outage")

    own_redis.stop()  # SHUTDOWN: the AOF is complete, the port refuses connections
    down_at = time.monotonic()
    wait_for(lambda: sender.count_since(503, down_at) >= 10, timeout=30,
             message="503s while Redis is down")
    assert service.readyz() == 503
    time.sleep(REDIS_OUTAGE_SECONDS)  # the outage itself, not synchronisation
    assert service.readyz() == 503
    up_at = time.monotonic()
    own_redis.start()  # same port, same AOF

    # No restart of gunicorn or the consumer: both recover by themselves.
    wait_for(lambda: sender.count_since(202, up_at) >= 10, timeout=30,
             message="202s again once Redis is back")
    wait_for(lambda: service.readyz() == 200, timeout=30, message="/readyz 200 again")
    web.check_alive()
    consumer.check_alive()
    accepted = sender.finish(allow_failures=True)
    service.wait_delivered(accepted, consumer)
    result = tally(service, "Redis stopped under load %d s" % REDIS_OUTAGE_SECONDS, sender.sent, accepted)

    statuses = sender.statuses()
    during = sender.statuses(since=down_at, until=up_at)
    after = sender.statuses(since=up_at)
    recovered_in = min(attempt.ended for attempt in sender.attempts
                       if attempt.status == 202 and attempt.started >= up_at) - up_at
    print("  statuses: %s; during the outage: %s; after it: %s; first 202 %.1f s after Redis was back"
          % (dict(statuses), dict(during), dict(after), recovered_in))
    assert result.lost == 0 and result.db_duplicates == 0
    # While Redis was down nothing could be queued, so nothing may have been acknowledged.
    assert during[202] == 0, during
    assert during[503] >= 10
    assert set(statuses) <= {202, 503, "no answer"}, statuses
    refusals = [attempt for attempt in sender.attempts if attempt.status == 503]
    assert all(attempt.retry_after == str(RETRY_AFTER_SECONDS) for attempt in refusals), \
        {attempt.retry_after for attempt in refusals}


def test_web_threads_push_again_at_once_after_redis_restarts(own_redis):
    # Web threads hold a connection each for pushes; a restart closes them all.
    import concurrent.futures
    import threading
    import spool_redis
    spool = spool_redis.RedisSpool(own_redis.url, 30)
    threads = 4
    together = threading.Barrier(threads)  # every thread of the pool pushes, each on its own connection

    def push(label):
        together.wait(timeout=30)
        spool.push(label.encode(), ["db"], 1)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(push, ["before %d" % n for n in range(threads)]))
        own_redis.stop()
        own_redis.start()  # same port, same AOF
        list(pool.map(push, ["after %d" % n for n in range(threads)]))  # raised SpoolUnavailable before
    batch = spool.claim("db", 1 << 20)
    assert sorted(batch.payloads) == sorted(b"%s %d" % (when, n) for when in (b"before", b"after")
                                            for n in range(threads))


def test_redis_killed_with_records_queued_keeps_them(request, tmp_path, postgres_server, own_redis):
    """SIGKILL Redis with records queued and no consumer: the AOF brings them back; a consumer writes them."""
    service = close_after(request, make_service(
        tmp_path, postgres_server.create_database(unique_database_name("faults")), own_redis.url))
    web = service.start_web()
    sender = Sender(service, per_request=50, max_requests=100)
    sender.start()
    sender.join(timeout=60)
    accepted = sender.finish()
    assert len(accepted) == 5000
    assert queued_requests(own_redis.url, "db") == queued_requests(own_redis.url, "file") == 100

    own_redis.kill()  # SIGKILL: no shutdown, no final AOF rewrite
    own_redis.start()
    assert queued_requests(own_redis.url, "db") == queued_requests(own_redis.url, "file") == 100
    # The web processes' pooled connections died with the server; they reconnect by themselves.
    late = {"sent": 0}

    def one_more_accepted():
        ids = [str(uuid.uuid4()) for _ in range(50)]
        body = json.dumps([{"id": record_id, "message": "after the restart"} for record_id in ids])
        late["sent"] += len(ids)
        status, _, reply = send(service.base_url, service.key, body.encode())
        assert status in (202, 503), (status, reply)
        if status == 202:
            accepted.update(ids)
        return status == 202
    wait_for(one_more_accepted, timeout=30, interval=0.5, message="a 202 after the restart")
    web.check_alive()

    consumer = service.start_consumer()
    service.wait_delivered(accepted, consumer)
    result = tally(service, "Redis SIGKILL with 100 requests queued, AOF always",
                   sender.sent + late["sent"], accepted)
    assert result.lost == 0 and result.db_duplicates == 0 and result.file_duplicates == 0


def test_postgres_down_under_load(request, tmp_path, own_postgres, redis_server):
    """PostgreSQL down for a minute under load: still 202, files keep growing, retries back off,
    the consumer's memory stays flat, and every record reaches the database once it is back."""
    service = close_after(request, make_service(
        tmp_path, own_postgres.url, redis_server.url,
        LOGFLOW_RETRY_BASE_SECONDS=0.5, LOGFLOW_RETRY_MAX_SECONDS=8, LOGFLOW_LEASE_SECONDS=10))
    web = service.start_web()
    consumer = service.start_consumer()
    sender = Sender(service, per_request=20, interval=0.05, max_seconds=PG_OUTAGE_SECONDS + 90)
    sender.start()
    wait_for(lambda: consumer.check_alive() or (service.db_count() > 0 and service.file_line_count() > 0),
             timeout=30, message="records in the database and the files before the outage")

    own_postgres.stop()
    down_at = time.monotonic()
    wait_for(lambda: consumer.check_alive() or consumer.count("db writer failed") > 0, timeout=30,
             message="the consumer to notice the outage")
    failures_before = consumer.count("db writer failed")
    lines_before, rss_before = service.file_line_count(), consumer.rss_kib()
    rss_samples = [rss_before]
    end = down_at + PG_OUTAGE_SECONDS
    while time.monotonic() < end:  # the outage itself; sampling RSS once a second meanwhile
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        consumer.check_alive()
        rss_samples.append(consumer.rss_kib())
    failures = consumer.count("db writer failed") - failures_before
    window = time.monotonic() - down_at
    lines_after, rss_after = service.file_line_count(), consumer.rss_kib()
    ready_during = service.readyz()
    up_at = time.monotonic()
    own_postgres.start()

    wait_for(lambda: service.readyz() == 200, timeout=30, message="/readyz 200 again")
    # Some traffic after the return, then stop sending.
    wait_for(lambda: sender.count_since(202, up_at) >= 20, timeout=30, message="202s after the return")
    web.check_alive()
    accepted = sender.finish(allow_failures=True)
    service.wait_delivered(accepted, consumer, timeout=max(DELIVERY_TIMEOUT, 90))
    result = tally(service, "PostgreSQL down %g s under load" % PG_OUTAGE_SECONDS, sender.sent, accepted)
    during = sender.statuses(since=down_at, until=up_at)
    print("  during the outage: statuses %s, /readyz %s, %d 'db writer failed' in %.0f s,"
          " file lines %d -> %d, consumer RSS %d -> %d KiB (max %d)"
          % (dict(during), ready_during, failures, window, lines_before, lines_after,
             rss_before, rss_after, max(rss_samples)))

    assert result.lost == 0 and result.db_duplicates == 0
    # The other requirements are checked together, so that one failure does not hide the next.
    problems = []
    if set(during) != {202}:
        # Ingestion should not depend on the database (keys are cached): every request gets a 202.
        problems.append("requests during the outage were not all accepted: %s" % dict(during))
    if not lines_after > lines_before:
        problems.append("the file writer stopped while the database was down: %d -> %d lines"
                        % (lines_before, lines_after))
    if not 0 < failures < window:
        # Backoff: far fewer failed attempts than one per 100 ms (here: under one per second).
        problems.append("%d 'db writer failed' in %.0f s: the retries do not back off" % (failures, window))
    if not max(rss_samples) < rss_before + 30 * 1024:
        # Records wait in Redis, not in the consumer's memory.
        problems.append("consumer RSS grew from %d to %d KiB" % (rss_before, max(rss_samples)))
    assert not problems, "\n".join(problems)


@pytest.fixture
def tiny_log_dir(tmp_path):
    """A 256 KiB tmpfs as the log folder (root only), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "logs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stderr.strip())
    yield path
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)


def assert_whole_lines(log_dir):
    """Every daily file ends with a newline and every line is JSON: no torn or partial line."""
    for folder, _, names in os.walk(log_dir):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                data = handle.read()
            assert data == b"" or data.endswith(b"\n"), "%s ends mid-line" % name
            for line in data.splitlines():
                json.loads(line)


def test_log_disk_full(request, tmp_path, postgres_server, redis_server, tiny_log_dir):
    """The log folder fills up: the file writer fails and retries, the database writer carries on,
    no line is torn; given room, every record reaches the files too."""
    service = close_after(request, make_service(
        tmp_path, postgres_server.create_database(unique_database_name("faults")), redis_server.url,
        LOGFLOW_LOG_DIR=str(tiny_log_dir), LOGFLOW_RETRY_BASE_SECONDS=0.2, LOGFLOW_RETRY_MAX_SECONDS=2))
    service.start_web()
    consumer = service.start_consumer()
    sender = Sender(service, per_request=50, interval=0.05, max_requests=400)
    sender.start()
    wait_for(lambda: consumer.check_alive() or consumer.count("file writer failed") > 0, timeout=60,
             message="the file writer to fail on a full disk")
    # A little more traffic while the disk is full, then stop.
    full_at = time.monotonic()
    wait_for(lambda: sender.count_since(202, full_at) >= 20, timeout=30, message="records after the disk filled")
    accepted = sender.finish()

    # The database writer is not held back by the file writer.
    wait_for(lambda: consumer.check_alive() or accepted <= service.db_ids(), timeout=30,
             message="every record in the database while the disk is full")
    in_files = {record["id"] for record in file_records(str(tiny_log_dir))}
    assert in_files < accepted  # some but not all
    assert_whole_lines(tiny_log_dir)
    failures = consumer.count("file writer failed")
    # Retried: the same batch fails again with a higher attempt count.
    # The retry comes after the back-off (0.2 s and up): polled for, not assumed to have happened by now.
    wait_for(lambda: re.search(r"file writer failed .*attempt [2-9]", consumer.text()), timeout=30,
             message="the file writer to retry the same batch")
    lines_while_full = service.file_line_count()

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_log_dir)], check=True)
    service.wait_delivered(accepted, consumer)
    result = tally(service, "log disk full (256 KiB tmpfs), then grown", sender.sent, accepted)
    print("  %d 'file writer failed' while full; %d file lines while full, %d after"
          % (failures, lines_while_full, service.file_line_count()))
    assert_whole_lines(tiny_log_dir)
    assert result.lost == 0 and result.db_duplicates == 0
    # A failed append is cut back whole and its batch retried: no line is written twice.
    assert result.file_duplicates == 0


def stall(port, key):
    """Open a connection that sends headers and the start of a body, then nothing; returns the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /logs HTTP/1.1\r\nHost: test\r\nX-API-Key: %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mess" % key.encode())
    return sock


def test_slow_clients_cannot_hold_the_web_workers(request, tmp_path, postgres_server, redis_server):
    """Clients that stall mid-body get 408 within the body timeout; others are served meanwhile."""
    service = close_after(request, make_service(
        tmp_path, postgres_server.create_database(unique_database_name("faults")), redis_server.url,
        LOGFLOW_BODY_TIMEOUT_SECONDS="2"))
    service.start_web()
    port = int(service.base_url.rsplit(":", 1)[1])
    # More stalled clients than the 2 workers x 4 threads.
    stalled = [stall(port, service.key) for _ in range(12)]
    started = time.monotonic()
    status, reply = post(service.base_url, service.key, b'{"message": "not held up"}')
    assert status == 202, reply
    answers = []
    for sock in stalled:
        with sock:
            data = b""
            while chunk := sock.recv(4096):  # the server closes the connection after its answer
                data += chunk
            answers.append(data.split(b"\r\n", 1)[0])
    waited = time.monotonic() - started
    assert answers == [b"HTTP/1.1 408 REQUEST TIMEOUT"] * len(stalled)
    # Each stalled client holds a thread for at most the body timeout.
    assert waited < 2 * (len(stalled) / 8 + 1) + 5
    print("slow clients: %d stalled clients all got 408 within %.1f s" % (len(stalled), waited))
