"""Chaos: random, overlapping faults under load against the whole stack, then an audit of what was stored.

gunicorn with docs/production.md's flags (2 workers), two huey_consumer
processes, Redis with AOF (appendfsync always) and PostgreSQL, both writers
configured. Sender threads post records with client-chosen, time-ordered ids
to two projects, in requests of 1-100 records, and retry each request with the
same ids until it gets a 202. Meanwhile a seeded fault loop, at random
intervals, SIGKILLs or SIGTERMs a consumer (and starts another), SIGKILLs a
gunicorn worker (the master starts another), SIGKILLs Redis or stops
PostgreSQL immediately and starts them again a little later; outages overlap.
The senders go on for a few seconds after the last repair.

Then the promise of a 202 is audited once the spool has drained: every
accepted record is in `logs` exactly once with its project, message and level,
and in the daily files at least once (duplicate lines, which at-least-once
delivery allows, are counted); nothing is quarantined; the spool counts no
record as waiting.

The seed is printed; LOGFLOW_CHAOS_SEED=<seed> replays the same sequence of
faults and pauses (not the same interleaving: the processes keep their own
pace). LOGFLOW_CHAOS_SECONDS sets how long faults are injected (default 25);
LOGFLOW_CHAOS_FAULTS=kill_redis,stop_postgres (say) limits them to some kinds,
to narrow a failure down.
"""
import collections
import http.client
import json
import os
import random
import signal
import socket
import threading
import time

import redis

import client
import models
import tasks
from conftest import base_settings
from helpers import file_records, wait_for
from processes import add_project, child_pids, make_service, query, send
from storage import DatabaseWriter
from test_faults import own_postgres, own_redis  # noqa: F401 (fixtures)

CHAOS_SECONDS = float(os.environ.get("LOGFLOW_CHAOS_SECONDS", "25"))
# The senders go on this long after the last repair, as clients do after an outage. A fault can
# lose the message that wakes a writer (Redis killed between a push and its wake-up, a consumer
# killed holding one); the records then wait for the next request that finds the writer's
# "scheduled" flag expired (LOGFLOW_LEASE_SECONDS, 2 s here) or for the once-a-minute sweep,
# which is longer than this test may take. Without this tail the last fault decides whether the
# spool drains in seconds or in a minute.
CALM_SECONDS = 4
SENDERS = 3
# A request still refused this long after the senders' end is given up (and reported).
GIVE_UP_SECONDS = 20
# Pause between two attempts of one request: a client's backoff, not synchronisation.
RETRY_PAUSE_SECONDS = 0.1
# After the last request: the longest a backed-off writer waits (LOGFLOW_RETRY_MAX_SECONDS) and a
# lease (2 s) several times over, far below the once-a-minute sweep, which must not be needed.
DRAIN_TIMEOUT = 30
LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")
# Characters COPY's text format escapes, and non-ASCII: a message must come back as it was sent.
MESSAGE_SUFFIXES = ("", "", "", " tab\there", " back\\slash", " new\nline", " caf\u00e9 \u2028 \U0001f600")


def chaos_seed():
    """The seed of this run: LOGFLOW_CHAOS_SEED to replay one, else a fresh one."""
    value = os.environ.get("LOGFLOW_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


class ChaosSender(threading.Thread):
    """Posts requests of 1-100 records until `until`, each retried with the same ids until it gets a 202."""

    def __init__(self, number, base_url, projects, rng, until):
        super().__init__(daemon=True, name="chaos-sender-%d" % number)
        self.number, self.base_url, self.projects = number, base_url, projects
        self.rng, self.until = rng, until
        self.expected = {}  # id -> (project id, message, level) of every record sent
        self.accepted = set()
        self.given_up = set()
        self.statuses = collections.Counter()  # of every attempt: 202, 503, "no answer (...)"
        self.unexpected = []  # (status, reply) of answers other than 202 and 503, and of partial 202s
        self.requests = 0
        self.error = None  # what stopped the thread, if not its deadline

    def records(self, project_id):
        """A new request's records, remembering what each should be stored as."""
        batch = []
        for index in range(self.rng.randint(1, 100)):
            record_id = client.time_ordered_id()
            message = "chaos %d.%d.%d%s" % (self.number, self.requests, index,
                                            self.rng.choice(MESSAGE_SUFFIXES))
            level = self.rng.choice(LEVELS)
            self.expected[record_id] = (project_id, message, level)
            batch.append({"id": record_id, "message": message, "level": level,
                          "timestamp": time.time_ns() // 1000, "metadata": {"sender": self.number}})
        return batch

    def run(self):
        try:
            while time.monotonic() < self.until:
                project_id, key = self.rng.choice(self.projects)
                batch = self.records(project_id)
                self.requests += 1
                ids = {record["id"] for record in batch}
                if self.post_until_accepted(key, json.dumps(batch).encode(), len(batch)):
                    self.accepted |= ids
                else:
                    self.given_up |= ids
        except Exception as error:  # reported by the test, which cannot see a thread's exception
            self.error = error
            raise

    def post_until_accepted(self, key, body, count):
        """Post one body again and again; True once it got a 202 for every record."""
        while True:
            try:
                status, _, reply = send(self.base_url, key, body, timeout=30)
            except (OSError, http.client.HTTPException) as error:  # no answer: a web worker died, say
                status, reply = "no answer (%s)" % type(error).__name__, None
            self.statuses[status] += 1
            if status == 202:
                if (reply["accepted"], reply["rejected"]) != (count, 0):
                    self.unexpected.append((status, reply))
                return True
            if status != 503 and not str(status).startswith("no answer"):
                self.unexpected.append((status, reply))
            if time.monotonic() > self.until + GIVE_UP_SECONDS:
                return False
            time.sleep(RETRY_PAUSE_SECONDS)


class FaultLoop:
    """Breaks the stack at random (seeded) moments and repairs it, noting each fault and repair.

    Redis and PostgreSQL stay down a random while; other faults can land
    meanwhile. Replacing a stopped consumer and waiting for gunicorn's new
    worker are checked on every step with a deadline, not waited for in
    place, so that one slow recovery never holds back the repair of another.
    """

    def __init__(self, service, web, redis_server, postgres_server, rng):
        self.service, self.web, self.rng = service, web, rng
        self.redis, self.postgres = redis_server, postgres_server
        self.consumers = [service.start_consumer() for _ in range(2)]
        self.started, self.wall_started = time.monotonic(), time.time()
        self.log = []  # (seconds since start, what happened)
        self.pending = []  # [description, deadline, check, then]
        self.down = {}  # "redis"/"postgres" -> monotonic time to start it again
        self.exits = []  # exit statuses of consumers stopped with SIGTERM

    def note(self, what):
        self.log.append((round(time.monotonic() - self.started, 2), what))

    def expect(self, description, check, then=lambda: None, timeout=30):
        """Run `then` once `check()` holds; fail the test if it does not hold within timeout seconds."""
        self.pending.append([description, time.monotonic() + timeout, check, then])

    def kill_consumer(self):
        consumer = self.rng.choice(self.consumers)
        consumer.popen.kill()
        consumer.popen.wait(timeout=10)
        self.consumers[self.consumers.index(consumer)] = self.service.start_consumer()
        self.note("SIGKILL consumer %d, started another" % consumer.pid)

    def stop_consumer(self):
        # Only a consumer that has beaten has installed huey's handler: SIGTERM kills one still starting.
        beating = beating_consumers(self.redis.url)
        ready = [consumer for consumer in self.consumers if consumer.pid in beating]
        if not ready:  # none ready yet (or Redis down): this turn passes without a fault
            return
        # Out of the running until it exits: a second signal would be huey's immediate stop.
        consumer = self.rng.choice(ready)
        self.consumers.remove(consumer)
        consumer.popen.send_signal(signal.SIGTERM)
        self.note("SIGTERM consumer %d" % consumer.pid)

        def replace():
            self.exits.append(consumer.popen.returncode)
            self.consumers.append(self.service.start_consumer())
            self.note("consumer %d exited (%s), started another" % (consumer.pid, consumer.popen.returncode))
        self.expect("consumer %d to exit after SIGTERM" % consumer.pid,
                    lambda: consumer.popen.poll() is not None, replace)

    def kill_web_worker(self):
        workers = child_pids(self.web.pid)
        if len(workers) < 2:  # gunicorn is still replacing one: this turn passes without a fault
            return
        victim = self.rng.choice(sorted(workers))
        os.kill(victim, signal.SIGKILL)
        self.note("SIGKILL gunicorn worker %d" % victim)
        self.expect("gunicorn to replace worker %d" % victim,
                    lambda: len(child_pids(self.web.pid) - {victim}) == 2,
                    lambda: self.note("gunicorn replaced worker %d" % victim))

    def kill_redis(self):
        self.redis.kill()
        self.down["redis"] = time.monotonic() + self.rng.uniform(0, 1.5)
        self.note("SIGKILL Redis")

    def stop_postgres(self):
        self.postgres.stop(mode="immediate")
        self.down["postgres"] = time.monotonic() + self.rng.uniform(0, 3)
        self.note("PostgreSQL stopped (immediate)")

    def break_something(self):
        faults = [self.kill_web_worker]
        if self.consumers:
            faults += [self.kill_consumer, self.stop_consumer]
        faults += [fault for name, fault in (("redis", self.kill_redis), ("postgres", self.stop_postgres))
                   if name not in self.down]
        chosen = os.environ.get("LOGFLOW_CHAOS_FAULTS")
        if chosen:
            faults = [fault for fault in faults if fault.__name__ in chosen.split(",")]
        if faults:
            self.rng.choice(faults)()

    def repair(self, force=False):
        """Start the servers whose outage is over (all of them if force), and act on what recovered."""
        now = time.monotonic()
        for name, server in (("redis", self.redis), ("postgres", self.postgres)):
            if name in self.down and (force or self.down[name] <= now):
                del self.down[name]
                server.start()  # polls until the server answers, with its own deadline
                self.note("%s started again" % name)
        for item in list(self.pending):
            description, deadline, check, then = item
            if check():
                self.pending.remove(item)
                then()
            elif time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s; faults so far: %s" % (description, self.log))

    def run(self, until):
        """Inject faults at random intervals until `until`, then repair everything."""
        next_fault = time.monotonic() + self.rng.uniform(0.5, 2)
        while time.monotonic() < until:
            if time.monotonic() >= next_fault:
                self.break_something()
                next_fault = time.monotonic() + self.rng.uniform(0.3, 2)
            self.repair()
            time.sleep(0.05)  # the loop's step: pacing, not synchronisation
        self.repair(force=True)
        wait_for(lambda: self.repair() or not self.pending, timeout=35, message="every repair")
        self.note("all repaired")


def beating_consumers(redis_url):
    """Pids of this host's consumers that have recorded a heartbeat; none while Redis is down."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=2) as connection:
            names = connection.zrange("logflow:consumers:heartbeats", 0, -1)
    except redis.RedisError:
        return set()
    host = socket.gethostname().encode() + b":"
    return {int(name[len(host):]) for name in names if name.startswith(host)}


def spool_drained(redis_url):
    """True when no writer has a request queued or a batch leased (written but not acknowledged)."""
    with redis.Redis.from_url(redis_url) as connection:
        return all(connection.llen("logflow:%s:queue" % writer) == 0
                   and connection.zcard("logflow:%s:leases" % writer) == 0 for writer in ("db", "file"))


def queued_records(redis_url):
    """Each writer's count of records waiting (queued or unacknowledged), as the spool keeps it."""
    with redis.Redis.from_url(redis_url) as connection:
        return {writer: int(connection.get("logflow:%s:queued" % writer) or 0) for writer in ("db", "file")}


def missing_records(missing, where, expected, started):
    """A problem line for accepted records missing from `where`: how many, when they were sent, a few of them.

    The ids are time-ordered: their first 48 bits are when they were made, in Unix milliseconds,
    compared here with `started`, the epoch seconds when the faults began.
    """
    seconds = sorted(int(record_id.replace("-", "")[:12], 16) / 1000 - started for record_id in missing)
    return ("%d accepted records missing from %s, sent %.2f s to %.2f s into the faults, e.g. %s"
            % (len(missing), where, seconds[0], seconds[-1], [(i, expected[i]) for i in sorted(missing)[:5]]))


def audit(service, expected, accepted, started):
    """What became of the accepted records; returns (problems, a summary line).

    started (epoch seconds) is when the faults began: the problems say when missing records were sent.
    """
    problems = []
    rows = query(service.db_url, "SELECT id::text, project_id, message, level FROM logs")
    in_db = collections.Counter(row[0] for row in rows)
    missing = accepted - set(in_db)
    if missing:
        problems.append(missing_records(missing, "logs", expected, started))
    twice = [record_id for record_id, count in in_db.items() if count > 1]
    if twice:
        problems.append("%d ids stored more than once in logs, e.g. %s" % (len(twice), twice[:5]))
    wrong = [row for row in rows if row[0] in expected and tuple(row[1:]) != expected[row[0]]]
    if wrong:
        problems.append("%d rows differ from what was sent, e.g. %s"
                        % (len(wrong), [(row, expected[row[0]]) for row in wrong[:3]]))

    lines = file_records(service.log_dir)
    in_files = collections.Counter(line["id"] for line in lines)
    missing = accepted - set(in_files)
    if missing:
        problems.append(missing_records(missing, "the daily files", expected, started))
    wrong = [line for line in lines if line["id"] in expected
             and (line["project_id"], line["message"], line["level"]) != expected[line["id"]]]
    if wrong:
        problems.append("%d file lines differ from what was sent, e.g. %s"
                        % (len(wrong), [(line, expected[line["id"]]) for line in wrong[:3]]))
    duplicates = sum(count - 1 for count in in_files.values())

    quarantined = query(service.db_url, "SELECT writer, project, error, record FROM quarantine")
    if quarantined:
        problems.append("%d records quarantined, e.g. %s" % (len(quarantined), quarantined[:3]))
    unexplained = (set(in_db) | set(in_files)) - set(expected)
    if unexplained:
        problems.append("%d stored ids were never sent, e.g. %s"
                        % (len(unexplained), sorted(unexplained)[:5]))
    summary = ("accepted %d | in logs %d rows (%d of them not accepted: queued, but no 202 came back)"
               " | file lines %d, %d of them duplicates" % (
                   len(accepted), len(rows), len(set(in_db) - accepted), len(lines), duplicates))
    return problems, summary


def test_random_faults_lose_no_accepted_record(request, tmp_path, own_postgres, own_redis):  # noqa: F811
    """Overlapping random faults under load: each record with a 202 is in logs once and in the files."""
    seed = chaos_seed()
    print("\nchaos seed %d (replay: LOGFLOW_CHAOS_SEED=%d)" % (seed, seed))
    rng = random.Random(seed)
    service = make_service(tmp_path, own_postgres.url, own_redis.url,
                           LOGFLOW_RETRY_BASE_SECONDS=0.2, LOGFLOW_RETRY_MAX_SECONDS=2,
                           LOGFLOW_RETRY_AFTER_SECONDS=1)
    request.addfinalizer(service.close)
    projects = [add_project(service, "chaos-a"), add_project(service, "chaos-b")]
    web = service.start_web()
    faults = FaultLoop(service, web, own_redis, own_postgres, random.Random(rng.random()))

    faults_end = time.monotonic() + CHAOS_SECONDS
    senders = [ChaosSender(number, service.base_url, projects, random.Random(rng.random()),
                           faults_end + CALM_SECONDS) for number in range(SENDERS)]
    for sender in senders:
        sender.start()
    try:
        faults.run(faults_end)
    finally:
        for sender in senders:
            sender.join(timeout=GIVE_UP_SECONDS + 40)
    assert not any(sender.is_alive() for sender in senders), "a sender did not finish"
    assert not any(sender.error for sender in senders), [sender.error for sender in senders]
    sent = time.monotonic()
    try:
        wait_for(lambda: spool_drained(own_redis.url), timeout=DRAIN_TIMEOUT, interval=0.2,
                 message="the spool to drain")
    except AssertionError as error:
        raise AssertionError("seed %d: %s\n%s\nfaults: %s"
                             % (seed, error, service.describe(set()), faults.log)) from None
    drained_in = time.monotonic() - sent
    for process in faults.consumers + [web]:
        process.check_alive()

    expected = {}
    accepted, given_up, statuses, unexpected = set(), set(), collections.Counter(), []
    for sender in senders:
        expected.update(sender.expected)
        accepted |= sender.accepted
        given_up |= sender.given_up
        statuses += sender.statuses
        unexpected += sender.unexpected
    problems, summary = audit(service, expected, accepted, faults.wall_started)
    print("faults: %s" % "; ".join("%.1f s %s" % entry for entry in faults.log))
    print("requests %d, attempts %s; given up %d records; drained %.1f s after the last request"
          % (sum(sender.requests for sender in senders), dict(statuses), len(given_up), drained_in))
    print(summary)
    if unexpected:
        problems.append("%d answers other than 202 and 503 or partial 202s, e.g. %s"
                        % (len(unexpected), unexpected[:3]))
    if given_up:
        problems.append("%d records were still refused %d s after the faults stopped"
                        % (len(given_up), GIVE_UP_SECONDS))
    waiting = queued_records(own_redis.url)
    if any(waiting.values()):
        # What /metrics shows as logflow_queue_records, and what LOGFLOW_MAX_QUEUE compares with.
        problems.append("the spool is empty but counts records waiting: %s" % waiting)
    if any(status != 0 for status in faults.exits):
        problems.append("consumers stopped with SIGTERM exited with %s" % faults.exits)
    # The per-minute counts histograms read (models.LogCount) equal the rows, redelivered batches included.
    counted = query(service.db_url, "SELECT project_id, minute, level, number FROM log_counts")
    rows = query(service.db_url, "SELECT project_id, (extract(epoch FROM date_trunc('minute', timestamp)) / 60)::bigint,"
                                 " level, count(*) FROM logs GROUP BY 1, 2, 3")
    if sorted(counted) != sorted(rows):
        problems.append("log_counts differs from the rows: %s" % sorted(set(counted) ^ set(rows))[:5])
    assert not problems, "seed %d:\n%s\nfaults: %s" % (seed, "\n".join(problems), faults.log)


def test_rows_written_survive_a_postgres_crash_right_after(tmp_path, own_postgres):  # noqa: F811
    """Rows the database writer has written (so their batch leaves the spool) outlive a PostgreSQL crash.

    The chaos test's first find: the test cluster runs with
    synchronous_commit=off, a common tuning, under which COMMIT returns before
    its WAL is written; a consumer then acknowledged batches that an immediate
    stop of PostgreSQL (a crash, as far as the WAL knows) took with it.
    """
    tasks.configure(base_settings(tmp_path).replace(database_url=own_postgres.url))
    try:
        models.create_tables()
        (setting,), = query(own_postgres.url, "SHOW synchronous_commit")
        assert setting == "off"  # the server setting the writer must not rely on
        with models.database.connection_context():
            project = models.Project.create(name="crash")
        at = "2026-11-28T00:00:00.000000Z"
        items = [(project.id, at, {"id": client.time_ordered_id(), "level": "INFO", "message": "row %d" % n,
                                   "metadata": {}, "timestamp": at}) for n in range(100)]
        DatabaseWriter().write(items)
        own_postgres.stop(mode="immediate")  # no shutdown checkpoint: what the WAL on disk holds survives
        own_postgres.start()
        assert query(own_postgres.url, "SELECT count(*) FROM logs") == [(100,)]
    finally:
        models.database.obj.close_all()
