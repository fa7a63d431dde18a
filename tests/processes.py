"""Real LogFlow processes for end-to-end and fault tests: gunicorn and huey_consumer on PostgreSQL and Redis.

make_service() prepares a database, the folders and a project for one test and
returns a Service that starts processes on them; Sender posts records from a
thread and remembers which ids got a 202; tally() counts what became of them
and prints the one-line summary the fault tests report:

    scenario | sent N | accepted N | stored N | lost N | duplicated N db rows, N file lines
"""
import collections
import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg2

import spool_redis
from helpers import file_records, wait_for
from redis_url import connect as connect_redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE_SECONDS = 2
# Redelivery should follow lease expiry within seconds. 60 s is ample for that but stops short of
# a restarted consumer's first sweep (60 s after it starts): records only the sweep finds fail.
DELIVERY_TIMEOUT = 60
# This interpreter's script, run by it directly (no shim in between): the pid we signal is the consumer.
HUEY_CONSUMER = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
if not os.path.exists(HUEY_CONSUMER):
    HUEY_CONSUMER = shutil.which("huey_consumer")


def dev_mode_environment(tmp_path, **settings):
    """This process's environment without LogFlow's settings (dev mode, folders under tmp_path), plus `settings`."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("DATABASE_URL", "REDIS_URL") and not name.startswith("LOGFLOW_")}
    environment.update(LOGFLOW_DATA_DIR=str(tmp_path / "data"), LOGFLOW_LOG_DIR=str(tmp_path / "logs"), **settings)
    return environment


class Process:
    """One child process with its output in a file, so failures can show its tail."""

    def __init__(self, name, argv, env, log_path):
        self.name, self.log_path = name, log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self):
        return self.popen.pid

    def text(self):
        """Everything the process has written so far."""
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def tail(self, lines=40):
        return "".join(self.text().splitlines(keepends=True)[-lines:])

    def count(self, needle):
        """Lines of its output holding needle (e.g. "db writer failed")."""
        return sum(needle in line for line in self.text().splitlines())

    def rss_kib(self):
        """Resident set size in KiB, from /proc/<pid>/status (VmRSS)."""
        with open("/proc/%d/status" % self.pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS for %s (pid %d)" % (self.name, self.pid))

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


def procfile_command(name):
    """The command of one line of the repository's Procfile (web, worker), unexpanded."""
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        for line in procfile:
            process, _, command = line.partition(":")
            if process.strip() == name:
                return command.strip()
    raise LookupError("the Procfile has no %s line" % name)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(url, sql):
    """Rows of one statement, on a connection of its own (nothing is cached between polls)."""
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


def send(base_url, key, body, content_type="application/json", encoding=None, timeout=15):
    """POST a body to /logs; returns (status, headers, body as JSON if it parses, else bytes)."""
    headers = {"X-API-Key": key, "Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(base_url + "/logs", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            raw = json.loads(raw)
        except ValueError:
            pass
        return error.code, error.headers, raw


def post(base_url, key, body, content_type="application/json", encoding=None):
    """POST a body to /logs; returns (status, decoded JSON reply)."""
    status, _, reply = send(base_url, key, body, content_type, encoding)
    return status, reply


def get_status(url, timeout=5):
    """The HTTP status of a GET, or None when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class Service:
    """A fresh database, Redis and folders for one test, and the processes started on them."""

    def __init__(self, tmp_path, env, key):
        self.tmp_path, self.env, self.key = tmp_path, env, key
        self.db_url, self.log_dir = env["DATABASE_URL"], env["LOGFLOW_LOG_DIR"]
        self.processes = []
        self.base_url = None

    def _spawn(self, name, argv, env=None):
        log_path = self.tmp_path / ("%s-%d.log" % (name, len(self.processes)))
        process = Process(name, argv, env or self.env, log_path)
        self.processes.append(process)
        return process

    def start_web(self, *extra_args):
        """Start the Procfile's web line, as honcho runs it (through sh), and return once /healthz answers.

        extra_args are appended to the line: gunicorn's last flag wins (a test may try another --worker-class).
        """
        port = free_port()
        # sh expands the line's ${LOGFLOW_BIND:-...} and finds gunicorn beside this interpreter;
        # exec makes the pid we signal gunicorn's master.
        env = dict(self.env, LOGFLOW_BIND="127.0.0.1:%d" % port,
                   PATH=os.path.dirname(sys.executable) + os.pathsep + self.env.get("PATH", os.defpath))
        process = self._spawn("gunicorn", ["sh", "-c", " ".join(
            ["exec", procfile_command("web")] + [shlex.quote(arg) for arg in extra_args])], env)
        self.base_url = "http://127.0.0.1:%d" % port

        def healthy():
            process.check_alive()
            return get_status(self.base_url + "/healthz", timeout=2) == 200
        wait_for(healthy, timeout=30, interval=0.1, message="gunicorn /healthz")
        return process

    def start_consumer(self):
        """Start huey_consumer as the Procfile's worker does (it needs no readiness wait)."""
        return self._spawn("consumer", [
            sys.executable, HUEY_CONSUMER, "tasks.huey", "--worker-type", "thread",
            "--workers", "4", "--graceful-signal", "TERM", "--quiet"])

    def readyz(self):
        """The status of GET /readyz (None if gunicorn does not answer)."""
        return get_status(self.base_url + "/readyz")

    def db_count(self):
        return query(self.db_url, "SELECT count(*) FROM logs")[0][0]

    def db_ids(self):
        return {row[0] for row in query(self.db_url, "SELECT id::text FROM logs")}

    def file_line_count(self):
        """Lines in the daily files, counted without parsing them."""
        total = 0
        for folder, _, names in os.walk(self.log_dir):
            for name in names:
                if name.endswith(".log"):
                    with open(os.path.join(folder, name), "rb") as handle:
                        total += handle.read().count(b"\n")
        return total

    def stored_ids(self):
        """(ids in the logs table, ids in the files)."""
        return self.db_ids(), {record["id"] for record in file_records(self.log_dir)}

    def delivered(self, ids):
        """True once every id is in both the logs table and the files."""
        in_db, in_files = self.stored_ids()
        return ids <= in_db and ids <= in_files

    def wait_delivered(self, ids, consumer, timeout=DELIVERY_TIMEOUT):
        """Poll until every id is stored; on timeout, show what was missing halfway and at the end."""
        snapshots = []
        for _ in range(2):
            try:
                return wait_for(lambda: consumer.check_alive() or self.delivered(ids),
                                timeout=timeout / 2, interval=0.5)
            except AssertionError:  # a timeout: note the spool's state, then keep waiting
                snapshots.append(self.describe(ids))
        raise AssertionError("%d records not all stored after %d s.\nHalfway: %s\nAt the end: %s"
                             % (len(ids), timeout, *snapshots))

    def describe(self, ids):
        """Missing ids per writer, and the spool's queued requests and lease deadlines per writer and shard."""
        in_db, in_files = self.stored_ids()
        spool = spool_redis.RedisSpool(self.env["REDIS_URL"], LEASE_SECONDS,
                                       shards=int(self.env.get("LOGFLOW_SPOOL_SHARDS", 1)))
        client = spool.client
        now = time.time()
        lines = ["missing %d from the DB, %d from the files; huey keys %s" % (
            len(ids - in_db), len(ids - in_files), sorted(key.decode() for key in client.scan_iter("huey*")))]
        for writer in ("db", "file"):
            for shard in range(spool.shards):
                leases = client.zrange(spool._key(writer, "leases", shard), 0, -1, withscores=True)
                lines.append("  spool %s, shard %d: %d requests queued, leased batches due in %s s" % (
                    writer, shard, client.llen(spool._key(writer, "queue", shard)),
                    [round(deadline - now, 1) for _, deadline in leases]))
        return "\n".join(lines)

    def close(self):
        """Stop every process (SIGTERM, then SIGKILL) and print their output's tails."""
        for process in self.processes:
            process.stop()
        for process in self.processes:  # shown by pytest only when the test failed (or with -s)
            print("---- %s (exit %s): %s\n%s" % (process.name, process.popen.returncode,
                                                process.log_path, process.tail()))


def make_service(tmp_path, postgres_url, redis_url, flush_redis=True, **settings):
    """A Service on this database and Redis: tables created, one project, its key; nothing started.

    settings are extra environment variables (LOGFLOW_RETRY_BASE_SECONDS="0.5", ...);
    LOGFLOW_LOG_DIR defaults to tmp_path/logs, LOGFLOW_LEASE_SECONDS to LEASE_SECONDS.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", LOGFLOW_STORAGE="db,file",
               DATABASE_URL=postgres_url, REDIS_URL=redis_url,
               LOGFLOW_LOG_DIR=str(tmp_path / "logs"), LOGFLOW_DATA_DIR=str(tmp_path / "data"),
               LOGFLOW_LEASE_SECONDS=str(LEASE_SECONDS))
    env.update({name: str(value) for name, value in settings.items()})
    if flush_redis:
        client = connect_redis(redis_url)  # one Redis, or each primary of a cluster
        client.flushdb()
        client.close()
    manage = [sys.executable, "manage.py"]
    subprocess.run(manage + ["init-db"], cwd=ROOT, env=env, check=True, capture_output=True)
    created = subprocess.run(manage + ["add-project", "e2e"], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True)
    key = created.stdout.strip()
    assert key.startswith("lf_") and "\n" not in key, created.stdout
    return Service(tmp_path, env, key)


def unique_database_name(prefix="e2e"):
    return "%s_%s" % (prefix, uuid.uuid4().hex[:12])


Attempt = collections.namedtuple("Attempt", "started ended status retry_after records")


class Sender(threading.Thread):
    """Posts batches of records until stopped (or a bound is hit), remembering the ids accepted.

    interval paces the requests (at most one per interval seconds); every
    attempt is noted with its start and end (time.monotonic()), its status (an
    int, or "error: ..." when the client got no answer) and the Retry-After it
    carried. A request that got no 202 counts as not accepted.
    """

    def __init__(self, service, per_request=50, max_requests=4000, max_seconds=120, interval=0.0,
                 timeout=15):
        super().__init__(daemon=True)
        self.service, self.per_request = service, per_request
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.interval, self.timeout = interval, timeout
        self.stopping = threading.Event()
        self.accepted, self.refused, self.failures, self.requests = set(), set(), [], 0
        self.attempts = []
        self.lock = threading.Lock()

    @property
    def sent(self):
        """Records posted so far, whatever the answer."""
        return self.requests * self.per_request

    def run(self):
        start = time.monotonic()
        deadline = start + self.max_seconds
        while not self.stopping.is_set() and self.requests < self.max_requests \
                and time.monotonic() < deadline:
            ids = [str(uuid.uuid4()) for _ in range(self.per_request)]
            body = json.dumps([{"id": record_id, "message": "load %d" % self.requests,
                                "level": "info"} for record_id in ids]).encode()
            started = time.monotonic()
            retry_after = None
            try:
                status, headers, reply = send(self.service.base_url, self.service.key, body,
                                              timeout=self.timeout)
                retry_after = headers.get("Retry-After")
            except (OSError, http.client.HTTPException) as error:  # no (whole) answer: not accepted
                status, reply = "error: %r" % error, None
            with self.lock:
                self.attempts.append(Attempt(started, time.monotonic(), status, retry_after, len(ids)))
                self.requests += 1
                if status == 202 and reply["accepted"] == len(ids):
                    self.accepted.update(ids)
                else:
                    self.refused.update(ids)
                    self.failures.append((status, reply))
            if self.interval:
                # Pacing to a steady rate, not synchronisation.
                self.stopping.wait(max(0.0, start + self.requests * self.interval - time.monotonic()))

    def statuses(self, since=None, until=None):
        """Counter of the statuses of attempts that started at or after since and ended by until."""
        with self.lock:
            return collections.Counter(
                attempt.status if isinstance(attempt.status, int) else "no answer"
                for attempt in self.attempts
                if (since is None or attempt.started >= since) and (until is None or attempt.ended <= until))

    def count_since(self, status, since):
        """Attempts with this status that started at or after since."""
        with self.lock:
            return sum(attempt.status == status and attempt.started >= since for attempt in self.attempts)

    def finish(self, allow_failures=False):
        """Stop sending; returns the accepted ids (after checking every request was accepted, by default)."""
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive()
        if not allow_failures:
            assert self.failures == [], self.failures[:5]
        assert self.accepted
        return self.accepted


def assert_stored_once(service, ids):
    """Every id in the DB exactly once and in the files; returns the number of duplicate file lines."""
    (rows, distinct), = query(service.db_url, "SELECT count(*), count(DISTINCT id) FROM logs")
    assert rows == distinct == len(ids)
    assert service.stored_ids() == (ids, ids)
    return len(file_records(service.log_dir)) - len(ids)


class Tally(collections.namedtuple(
        "Tally", "scenario sent accepted stored lost db_duplicates file_duplicates unaccepted_stored")):
    """What became of the records a test sent; line() is the summary the fault tests print."""

    def line(self):
        return ("%s | sent %d | accepted %d | stored %d | lost %d | duplicated %d db rows, %d file lines"
                % (self.scenario, self.sent, self.accepted, self.stored, self.lost,
                   self.db_duplicates, self.file_duplicates))


def tally(service, scenario, sent, accepted):
    """Count sent/accepted/stored/lost/duplicated records and print the summary line.

    stored: accepted records in both the logs table and the files; lost: accepted
    ones missing from either; duplicated: rows (or file lines) beyond one per id.
    Records that were not accepted (503, no answer) but stored all the same are
    not counted as stored; their number follows on a second line when there are any.
    """
    db_ids = [row[0] for row in query(service.db_url, "SELECT id::text FROM logs")]
    file_ids = [record["id"] for record in file_records(service.log_dir)]
    in_db, in_files = set(db_ids), set(file_ids)
    stored = accepted & in_db & in_files
    result = Tally(scenario, sent, len(accepted), len(stored), len(accepted - stored),
                   len(db_ids) - len(in_db), len(file_ids) - len(in_files),
                   len((in_db | in_files) - accepted))
    print("\n" + result.line())
    if result.unaccepted_stored:
        print("  (%d records not accepted were stored all the same: queued, but the client got no 202)"
              % result.unaccepted_stored)
    return result


def add_project(service, name):
    """Create one more project on the service's database with manage.py; returns (its id, its key)."""
    created = subprocess.run([sys.executable, "manage.py", "add-project", name], cwd=ROOT,
                             env=service.env, check=True, capture_output=True, text=True)
    key = created.stdout.strip()
    assert key.startswith("lf_") and "\n" not in key, created.stdout
    (project_id,), = query(service.db_url, "SELECT id FROM projects WHERE name = '%s'" % name)
    return project_id, key


def child_pids(pid):
    """The pids of a process's children (gunicorn's workers, for its master), from /proc."""
    try:
        threads = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:  # the process has exited
        return set()
    children = set()
    for thread in threads:
        try:
            with open("/proc/%d/task/%s/children" % (pid, thread)) as listing:
                children.update(int(child) for child in listing.read().split())
        except FileNotFoundError:  # that thread has exited
            pass
    return children
