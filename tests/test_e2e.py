"""End to end: gunicorn and huey_consumer as real processes on PostgreSQL and Redis, fed over HTTP."""
import gzip
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg2
import pytest
import redis

import spool
from helpers import file_records, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE_SECONDS = 2
# Redelivery should follow lease expiry within seconds. 60 s is ample for that but stops short of
# a restarted consumer's first sweep (60 s after it starts): records only the sweep finds fail.
DELIVERY_TIMEOUT = 60
# This interpreter's script, run by it directly (no shim in between): the pid we signal is the consumer.
HUEY_CONSUMER = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
if not os.path.exists(HUEY_CONSUMER):
    HUEY_CONSUMER = shutil.which("huey_consumer")


class Process:
    """One child process with its output in a file, so failures can show its tail."""

    def __init__(self, name, argv, env, log_path):
        self.name, self.log_path = name, log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)

    def tail(self, lines=40):
        with open(self.log_path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])

    def check_alive(self):
        """Fail with the process's output if it has exited."""
        if self.popen.poll() is not None:
            raise RuntimeError("%s exited with %s:\n%s" % (self.name, self.popen.returncode, self.tail()))

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL if it has not exited within timeout seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(url, sql):
    """Rows of one statement, on a connection of its own (nothing is cached between polls)."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


def post(base_url, key, body, content_type="application/json", encoding=None):
    """POST a body to /logs; returns (status, decoded JSON reply)."""
    headers = {"X-API-Key": key, "Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(base_url + "/logs", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Service:
    """A fresh database, Redis and folders for one test, and the processes started on them."""

    def __init__(self, tmp_path, env, key):
        self.tmp_path, self.env, self.key = tmp_path, env, key
        self.db_url, self.log_dir = env["DATABASE_URL"], env["LOGFLOW_LOG_DIR"]
        self.processes = []
        self.base_url = None

    def _spawn(self, name, argv):
        log_path = self.tmp_path / ("%s-%d.log" % (name, len(self.processes)))
        process = Process(name, argv, self.env, log_path)
        self.processes.append(process)
        return process

    def start_web(self):
        """Start gunicorn and return once /healthz answers."""
        port = free_port()
        web = self._spawn("gunicorn", [
            sys.executable, "-m", "gunicorn", "logflow:create_app()", "--bind", "127.0.0.1:%d" % port,
            "--worker-class", "gthread", "--workers", "2", "--threads", "4",
            # The default control socket is one path per user: concurrent gunicorns would share it.
            "--no-control-socket"])
        self.base_url = "http://127.0.0.1:%d" % port

        def healthy():
            web.check_alive()
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        wait_for(healthy, timeout=30, interval=0.1, message="gunicorn /healthz")
        return web

    def start_consumer(self):
        """Start huey_consumer as the Procfile's worker does (it needs no readiness wait)."""
        return self._spawn("consumer", [
            sys.executable, HUEY_CONSUMER, "tasks.huey", "--worker-type", "thread",
            "--workers", "4", "--graceful-signal", "TERM", "--quiet"])

    def db_count(self):
        return query(self.db_url, "SELECT count(*) FROM logs")[0][0]

    def stored_ids(self):
        """(ids in the logs table, ids in the files)."""
        return ({row[0] for row in query(self.db_url, "SELECT id::text FROM logs")},
                {record["id"] for record in file_records(self.log_dir)})

    def delivered(self, ids):
        """True once every id is in both the logs table and the files."""
        in_db, in_files = self.stored_ids()
        return ids <= in_db and ids <= in_files

    def wait_delivered(self, ids, consumer):
        """Poll until every id is stored; on timeout, show what was missing halfway and at the end."""
        snapshots = []
        for _ in range(2):
            try:
                return wait_for(lambda: consumer.check_alive() or self.delivered(ids),
                                timeout=DELIVERY_TIMEOUT / 2, interval=0.5)
            except AssertionError:  # a timeout: note the spool's state, then keep waiting
                snapshots.append(self.describe(ids))
        raise AssertionError("%d records not all stored after %d s.\nHalfway: %s\nAt the end: %s"
                             % (len(ids), DELIVERY_TIMEOUT, *snapshots))

    def describe(self, ids):
        """Missing ids per writer, and the spool's queued requests and lease deadlines per writer."""
        in_db, in_files = self.stored_ids()
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        seconds, micros = client.time()
        lines = ["missing %d from the DB, %d from the files; huey keys %s" % (
            len(ids - in_db), len(ids - in_files), sorted(key.decode() for key in client.keys("huey*")))]
        for writer in ("db", "file"):
            leases = client.zrange("logflow:%s:leases" % writer, 0, -1, withscores=True)
            lines.append("  spool %s: %d requests queued, leased batches due in %s s" % (
                writer, client.llen("logflow:%s:queue" % writer),
                [round(deadline - seconds - micros / 1e6, 1) for _, deadline in leases]))
        return "\n".join(lines)


@pytest.fixture
def service(tmp_path, postgres_server, redis_server):
    """Fresh database, flushed Redis, tmp folders, one project; every process stopped at the end."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", LOGFLOW_STORAGE="db,file",
               DATABASE_URL=postgres_server.create_database("e2e_" + uuid.uuid4().hex[:12]),
               REDIS_URL=redis_server.url, LOGFLOW_LOG_DIR=str(tmp_path / "logs"),
               LOGFLOW_DATA_DIR=str(tmp_path / "data"), LOGFLOW_LEASE_SECONDS=str(LEASE_SECONDS))
    redis.Redis.from_url(redis_server.url).flushdb()
    manage = [sys.executable, "manage.py"]
    subprocess.run(manage + ["init-db"], cwd=ROOT, env=env, check=True, capture_output=True)
    created = subprocess.run(manage + ["add-project", "e2e"], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
    key = created.stdout.strip()
    assert key.startswith("lf_") and "\n" not in key, created.stdout
    svc = Service(tmp_path, env, key)
    yield svc
    for process in svc.processes:
        process.stop()
    for process in svc.processes:  # shown by pytest only when the test failed
        print("---- %s (exit %s): %s\n%s" % (process.name, process.popen.returncode,
                                            process.log_path, process.tail()))


class Sender(threading.Thread):
    """Posts batches of records until stopped (or a bound is hit), remembering the ids accepted."""

    def __init__(self, service, per_request=50, max_requests=4000, max_seconds=120):
        super().__init__(daemon=True)
        self.service, self.per_request = service, per_request
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.stopping = threading.Event()
        self.accepted, self.failures, self.requests = set(), [], 0

    def run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self.stopping.is_set() and self.requests < self.max_requests \
                and time.monotonic() < deadline:
            ids = [str(uuid.uuid4()) for _ in range(self.per_request)]
            body = json.dumps([{"id": record_id, "message": "load %d" % self.requests,
                                "level": "info"} for record_id in ids]).encode()
            try:
                status, reply = post(self.service.base_url, self.service.key, body)
            except OSError as error:
                status, reply = repr(error), None
            self.requests += 1
            if status == 202 and reply["accepted"] == len(ids):
                self.accepted.update(ids)
            else:
                self.failures.append((status, reply))

    def finish(self):
        """Stop sending; returns the accepted ids after checking that every request was accepted."""
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive()
        assert self.failures == [], self.failures[:5]
        assert self.accepted
        return self.accepted


def assert_stored_once(service, ids):
    """Every id in the DB exactly once and in the files; returns the number of duplicate file lines."""
    (rows, distinct), = query(service.db_url, "SELECT count(*), count(DISTINCT id) FROM logs")
    assert rows == distinct == len(ids)
    assert service.stored_ids() == (ids, ids)
    return len(file_records(service.log_dir)) - len(ids)


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


def test_a_dead_consumers_batches_return_as_their_leases_run_out(service):
    """Batches left leased at different times by a dead consumer are written without waiting for the sweep."""
    dead = spool.RedisSpool(service.env["REDIS_URL"], LEASE_SECONDS)
    ids = set()
    for number in range(3):
        record_id = str(uuid.uuid4())
        ids.add(record_id)
        record = {"id": record_id, "level": "INFO", "message": "orphan %d" % number, "metadata": {},
                  "timestamp": "2026-01-01T00:00:00.000000Z"}
        dead.push(json.dumps({"project": 1, "received_at": "2026-01-01T00:00:00.000000Z",
                              "records": [record]}).encode(), ["db", "file"])
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
        honcho.popen.send_signal(signal.SIGINT)
        honcho.popen.wait(timeout=30)
    finally:
        honcho.stop()
        print(honcho.tail())
