#!/usr/bin/env python3
"""The viewer's benchmark: its reads on 10,000,000 stored logs, 50 live viewers beside ingestion, and the browser.

    python3 bench/viewer.py                    # 10,000,000 rows: about 7 minutes, plus 3.5 for the first load
    python3 bench/viewer.py --rows 200000      # a quick try: about 1.5 minutes

Starts Redis, a PostgreSQL whose data folder is kept under
/tmp/logflow-bench-viewer/<rows> between runs (--fresh loads it again), the
Procfile's web line and a consumer, all on 127.0.0.1. The first run COPYs
--rows logs of realistic shape into one project, spread over 7 days, with
three smaller projects beside it, then fills the histogram's rollup with its
own command (manage.py rebuild-counts) where the code has one. Then prints:

1. the server time of each read the viewer makes (HTTP round trip, median
   and p95 of --requests requests, and the CPU the server used per request),
   each beside the issue's target;
2. single-record POSTs (wrk) alone and with 50 live viewers polling
   GET /logs/live once a second, side by side, with their ratio; and the
   server time a live viewer costs per second;
3. in headless chromium, the time to render 1,000 rows of the explore page.

docs/benchmarks.md ("Viewer") explains the figures.
"""
import argparse
import collections
import datetime
import http.client
import json
import math
import multiprocessing
import os
import pwd
import random
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import psycopg2
import requests

import servers  # bench/servers.py, first: the stack; it puts the repository's root and tests/ on sys.path
import meters  # bench/meters.py: the CPU meter
import reporting  # bench/reporting.py: the machine's facts, medians and spreads
import services  # tests/services.py
import spool
import spool_redis
import storage  # storage.copy_line: the row format the database writer COPYs
import traffic  # bench/traffic.py: wrk
import web

CACHE = "/tmp/logflow-bench-viewer"
# Bump when the generated data changes shape: a cached database of another layout is loaded afresh.
LAYOUT = 1
DAYS = 7
MAIN = "main"
# The smaller projects beside it, each holding this share of the main project's rows.
OTHERS = {"api-staging": 0.02, "batch-jobs": 0.01, "marketing-site": 0.005}
USER = "bench-viewer"
# Words a person searches for: one in about 2 % of messages, one in a handful.
COMMON_WORD, RARE_WORD = "timeout", "needle-7f3a"
RARE_EVERY = 2_000_000  # rows per needle
# Distinct records per project and loader process, each row one of them with its own id and times.
TEMPLATES = 20_000
# The targets, in ms of server time.
TARGETS = {"first page": 100, "permalink": 100, "histogram 24h": 500, "overview": 300}
LIVE_TARGET_MS = 20  # per viewer per second
SLOW_MS = 100
# --viewer-pool: the niceness of the web process the live viewers poll.
VIEWER_NICENESS = 10
LEVEL_WEIGHTS = (("DEBUG", 30), ("INFO", 62), ("WARN", 6), ("ERROR", 1.8), ("CRITICAL", 0.2))
SERVICES = ("checkout", "billing", "auth", "search", "inventory", "gateway", "notifications")
PATHS = ("/api/orders", "/api/users", "/api/cart", "/api/search", "/api/payments", "/api/products", "/healthz")
STATUSES = (200,) * 40 + (201,) * 4 + (204,) * 3 + (304,) * 3 + (404,) * 2 + (400, 401, 403)
EXCEPTIONS = ("KeyError: 'sku'", "ValueError: invalid literal for int() with base 10: 'abc'",
              "psycopg2.OperationalError: server closed the connection unexpectedly",
              "TimeoutError: upstream did not answer within 30 s", "AttributeError: 'NoneType' object has no attribute 'id'")


def load_text():
    """The 1-minute load average, as `uptime` shows it, for the report beside each figure."""
    return "load %.2f, %.2f, %.2f" % os.getloadavg()


# ---------------------------------------------------------------- the data

class Rows:
    """Log rows of one project in COPY's text format (storage.copy_line), made fast from a seeded generator."""

    def __init__(self, seed):
        self.random = random.Random(seed)
        self.pools = {}  # project id → its templates
        self.seconds = {}  # whole second → "YYYY-MM-DDTHH:MM:SS", many rows share one
        levels, weights = zip(*LEVEL_WEIGHTS)
        self.levels, self.cumulative = levels, [sum(weights[:i + 1]) for i in range(len(weights))]

    def time_text(self, micros):
        second, fraction = divmod(micros, 1000000)
        prefix = self.seconds.get(second)
        if prefix is None:
            prefix = self.seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%06dZ" % (prefix, fraction)

    def uuid7(self, micros):
        """A version 7 UUID of this time, as LogFlow makes them (records.random_uuid)."""
        stamp, noise = "%012x" % (micros // 1000), "%019x" % self.random.getrandbits(76)
        # Version 7, then the variant's two bits (10) and two random ones: 8, 9, a or b.
        return "%s-%s-7%s-%s%s-%s" % (stamp[:8], stamp[8:], noise[:3], "89ab"[int(noise[3], 16) & 3], noise[4:7],
                                      noise[7:])

    def record(self, micros, needle=False):
        """One record as the spool carries it: id, level, message, metadata, timestamp."""
        pick = self.random
        draw = pick.random() * self.cumulative[-1]
        level = self.levels[next(i for i, edge in enumerate(self.cumulative) if draw < edge)]
        service = pick.choice(SERVICES)
        method = "GET" if pick.random() < 0.7 else pick.choice(("POST", "PUT", "DELETE"))
        path = pick.choice(PATHS)
        status = pick.choice(STATUSES)
        duration = int(pick.expovariate(1 / 40)) + 1
        metadata = {"service": service, "request_id": "%016x" % pick.getrandbits(64),
                    "host": "web-%d" % pick.randrange(1, 9),
                    "http": {"method": method, "path": path, "status": status, "duration_ms": duration}}
        if pick.random() < 0.7:
            metadata["user"] = "user%d" % pick.randrange(1, 50000)
        if level == "INFO":
            message = "%s %s/%d %d %dms" % (method, path, pick.randrange(1, 100000), status, duration)
        elif level == "DEBUG":
            message = pick.choice(("cache hit key=user:%d" % pick.randrange(50000),
                                   "SELECT * FROM orders WHERE id = %d took %d ms" % (pick.randrange(10**6), duration),
                                   "enqueued job send_email id=%d" % pick.randrange(10**7)))
        elif level == "WARN":
            message = pick.choice(("slow request %s %s took %d ms" % (method, path, duration * 50),
                                   "retrying call to payments (attempt %d): timeout" % pick.randrange(1, 4),
                                   "rate limit near for client %d" % pick.randrange(1000)))
        else:
            exception = pick.choice(EXCEPTIONS)
            message = pick.choice(("unhandled exception in %s %s" % (method, path),
                                   "upstream timeout after 30000 ms calling %s" % pick.choice(SERVICES),
                                   "payment failed for order %d: card_declined" % pick.randrange(10**6)))
            metadata["error"] = {"type": exception.split(":")[0]}
            if pick.random() < 0.4:  # a stack trace now and then, on many lines
                message += "\nTraceback (most recent call last):\n" + "".join(
                    '  File "/app/%s/handlers.py", line %d, in %s\n    %s\n' % (
                        service, pick.randrange(20, 900), name, code)
                    for name, code in (("dispatch", "return handler(request)"), ("handle", "order = load(request)"),
                                       ("load", "return cache[key]"))) + exception
        if needle:
            message += " " + RARE_WORD
        return {"id": self.uuid7(micros), "level": level, "message": message, "metadata": metadata,
                "timestamp": self.time_text(micros)}

    def template(self, project_id, needle=False):
        """A row of COPY text (storage.copy_line) with %s for its id, request id, timestamp and received time."""
        record = self.record(0, needle)
        # Markers that survive copy_line's escaping and JSON unchanged, in the order they appear in the line.
        markers = ["@@%s@@" % name for name in ("id", "request", "time", "received")]
        record.update(id=markers[0], timestamp=markers[2])
        record["metadata"]["request_id"] = markers[1]
        line = storage.copy_line(project_id, markers[3], record).replace("%", "%%")
        for marker in markers:
            line = line.replace(marker, "%s")
        return line

    def lines(self, project_id, start, end, count, needles=0):
        """count rows of this project timestamped between start and end (µs), in COPY text, oldest first.

        Each row is one of TEMPLATES varied records of the project with its own
        id, request id and times: about 5 µs a row instead of 25 for a record
        made from scratch.
        """
        pool = self.pools.get(project_id)
        if pool is None:
            pool = self.pools[project_id] = [self.template(project_id) for _ in range(TEMPLATES)]
        pick, bits, uniform = self.random.randrange, self.random.getrandbits, self.random.random
        span = end - start
        times = sorted(start + int(uniform() * span) for _ in range(count))
        marked = set(self.random.sample(range(count), min(needles, count)))
        out = []
        for index, micros in enumerate(times):
            template = self.template(project_id, True) if index in marked else pool[int(uniform() * TEMPLATES)]
            out.append(template % (self.uuid7(micros), "%016x" % bits(64), self.time_text(micros),
                                   self.time_text(micros + 20000 + int(uniform() * 880000))))
        return out


def hourly_counts(rows, hours):
    """rows spread over hours with a daily rhythm (busy afternoons, quiet nights), summing exactly to rows."""
    weights = [1 + 0.6 * math.sin(2 * math.pi * ((hour % 24) - 9) / 24) for hour in range(hours)]
    exact = [rows * weight / sum(weights) for weight in weights]
    counts = [int(value) for value in exact]
    for index in sorted(range(hours), key=lambda i: counts[i] - exact[i])[:rows - sum(counts)]:
        counts[index] += 1
    return counts


generator = None  # a loader process's Rows


def copy_hour(job):
    """A loader process's work: COPY one hour of every project's rows; returns the rows written."""
    global generator
    url, hour, start, projects = job
    if generator is None:  # once per process: its templates take a second or two to make
        generator = Rows(seed=os.getpid())
    generator.random.seed(hour)
    lines = []
    for project_id, count, needles in projects:
        lines += generator.lines(project_id, start, start + 3600 * 1000000, count, needles)
    data = "".join(lines)
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.copy_expert("COPY logs (%s) FROM STDIN" % storage.COLUMNS, _Reader(data))
    connection.close()
    return len(lines)


class _Reader:
    """A file-like view of a str for copy_expert, read in large pieces without copying it into a StringIO."""

    def __init__(self, text):
        self.data, self.at = text.encode(), 0

    def read(self, size=-1):
        size = len(self.data) - self.at if size is None or size < 0 else size
        piece = self.data[self.at:self.at + size]
        self.at += len(piece)
        return piece

    readline = read


# ---------------------------------------------------------------- the cached database

class CachedPostgres(services.PostgresServer):
    """services.PostgresServer (same settings) in a folder that outlives the run: the loaded logs are kept."""

    def __init__(self, base):
        self.bindir = services._pg_bindir()
        self.directory = self.base = base
        self.user = services._server_user()
        self.port = services._free_port()
        self.datadir, self.sockdir = os.path.join(base, "data"), os.path.join(base, "sock")
        self.log_path = os.path.join(base, "postgres.log")
        os.makedirs(self.sockdir, exist_ok=True)
        os.chmod(os.path.dirname(base), 0o755)
        os.chmod(base, 0o755)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(self.user)
            for path in (base, self.sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.url = "postgresql://%s@127.0.0.1:%d/logflow_bench" % (self.user, self.port)

    def _shutdown(self):
        try:
            self.stop()
        except Exception:
            self.stop(mode="immediate")


def open_cache(args, folder=CACHE):
    """Start the cached PostgreSQL of folder/<rows> (a new one if missing, stale or --fresh); returns (server, marker or None).

    bench/alerts.py keeps its own folder: the rules it adds would otherwise be
    evaluated by this benchmark's consumer.
    """
    base = os.path.join(folder, str(args.rows))
    marker_path = os.path.join(base, "loaded.json")
    marker = None
    if os.path.exists(marker_path) and not args.fresh:
        with open(marker_path) as saved:
            marker = json.load(saved)
        age = time.time() - marker["end"]
        if marker.get("layout") != LAYOUT or age > args.max_age * 3600:
            servers.log("cached data is %.1f h old or of another layout: loading afresh" % (age / 3600))
            marker = None
    if marker is None:
        shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base, exist_ok=True)
    server = CachedPostgres(base)
    services._servers.append(server)  # stopped (never deleted) by services.shutdown_all()
    if marker is None:
        server.initdb()
    server.start()
    server.url = server.create_database("logflow_bench")
    return server, marker, marker_path


def load(stack, args, marker_path):
    """Projects, then args.rows logs in the main project over the last DAYS days, COPYed by two processes."""
    ids = {name: stack.add_project(name)[0] for name in [MAIN, *OTHERS]}
    end = int(time.time()) // 3600 * 3600 * 1000000  # the last whole hour: rows never in the future
    hours = DAYS * 24
    start = end - hours * 3600 * 1000000
    main_counts = hourly_counts(args.rows, hours)
    other_counts = {name: hourly_counts(int(args.rows * share), hours) for name, share in OTHERS.items()}
    needles = hourly_counts(max(2, args.rows // RARE_EVERY), hours)
    jobs = [(stack.db_url, hour, start + hour * 3600 * 1000000,
             [(ids[MAIN], main_counts[hour], needles[hour])]
             + [(ids[name], counts[hour], 0) for name, counts in other_counts.items()])
            for hour in range(hours)]
    began, written = time.monotonic(), 0
    # Two processes: one generates the next hour while PostgreSQL takes the other's COPY.
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for number, rows in enumerate(pool.imap_unordered(copy_hour, jobs), 1):
            written += rows
            if number % 24 == 0:
                servers.log("loaded %d of %d hours, %d rows, %.0f rows/s" % (
                    number, hours, written, written / (time.monotonic() - began)))
    copied = time.monotonic() - began
    connection = psycopg2.connect(stack.db_url)  # not `with`: that would open a transaction, where VACUUM cannot run
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) logs")  # what autovacuum would have done by now
        cursor.execute("SELECT to_regclass('log_counts') IS NOT NULL")
        rollup = cursor.fetchone()[0]
    connection.close()
    vacuumed = time.monotonic() - began - copied
    counted = None
    if rollup:
        servers.log("filling the histogram's rollup: manage.py rebuild-counts")
        counting = time.monotonic()
        stack.manage("rebuild-counts")
        counted = time.monotonic() - counting
    marker = {"layout": LAYOUT, "rows": args.rows, "written": written, "end": end // 1000000,
              "copy_s": copied, "vacuum_s": vacuumed, "counts_s": counted, "rollup": rollup}
    with open(marker_path, "w") as saved:
        json.dump(marker, saved)
    return marker


# ---------------------------------------------------------------- the stack

def reset(stack, marker):
    """Delete what earlier runs sent (every row timestamped after the load's end) and its counts; returns rows deleted.

    Each run then reads the data as loaded: the records ingested at the end of
    a run would otherwise sit above it, newest, in the next run's first pages.
    """
    end = datetime.datetime.fromtimestamp(marker["end"], datetime.timezone.utc).replace(tzinfo=None)
    connection = psycopg2.connect(stack.db_url)
    connection.autocommit = True  # VACUUM cannot run in a transaction
    deleted = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM projects")
        for project_id, in cursor.fetchall():
            cursor.execute("DELETE FROM logs WHERE project_id = %s AND timestamp >= %s", (project_id, end))
            deleted += cursor.rowcount
        cursor.execute("SELECT to_regclass('log_counts') IS NOT NULL")
        if cursor.fetchone()[0]:
            cursor.execute("DELETE FROM log_counts WHERE minute >= %s", (marker["end"] // 60,))
        if deleted:
            cursor.execute("VACUUM (ANALYZE) logs")
    connection.close()
    return deleted


def after_burst(stack, session, args, marker):
    """The level=ERROR first page again, now that the ingestion runs put many newer INFO logs above the loaded ones."""
    end = datetime.datetime.fromtimestamp(marker["end"], datetime.timezone.utc).replace(tzinfo=None)
    with psycopg2.connect(stack.db_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM logs WHERE project_id = (SELECT id FROM projects WHERE name = %s)"
                       " AND timestamp >= %s", (MAIN, end))
        newer = cursor.fetchone()[0]
    servers.log("timing the level=ERROR first page below %d newer INFO logs" % newer)
    url = stack.logflow_url + "/logs?project=%s&limit=100&level=ERROR" % MAIN
    return ("first page, level=ERROR, below %d new INFO logs" % newer, TARGETS["first page"],
            timed(stack, session, url, args.requests))


class ViewerStack(servers.Stack):
    """servers.Stack without hello: Redis, the cached PostgreSQL, then the web line and one consumer."""

    def start_servers(self, server):
        self.redis = services.start_redis(os.path.join(self.workdir, "redis"))
        self.pg, self.db_url = server, server.url
        self.set_environment()
        self.manage("init-db")  # creates what the code added since the cache was made (a rollup is counted then)
        connection = psycopg2.connect(self.db_url)
        connection.autocommit = True  # ALTER SYSTEM cannot run in a transaction
        with connection.cursor() as cursor:
            # Statements slower than this go to the server's log, which the report sums up.
            cursor.execute("ALTER SYSTEM SET log_min_duration_statement = %d" % SLOW_MS)
            cursor.execute("SELECT pg_reload_conf()")
        connection.close()
        self.log_start = os.path.getsize(server.log_path)
        self.spool = spool_redis.RedisSpool(self.redis.url, 30)

    def start_processes(self):
        self.web_args = self.web_flags()
        self.web = web.settings(self.env, extra_args=self.web_args)
        self.logflow_url = self.start_gunicorn("logflow")
        # Where the live viewers poll: the same web process, or with --viewer-pool a second one (the
        # same line) at a lower CPU priority, as a proxy would route /ui/ and /logs/live to it.
        self.viewer_url = self.logflow_url
        if self.args.viewer_pool:
            self.viewer_url = self.start_gunicorn("logflow-viewer")
            master = next(process for name, process in self.processes if name == "logflow-viewer")
            os.setpriority(os.PRIO_PGRP, master.pid, VIEWER_NICENESS)
        self.spawn("consumer-0", [sys.executable, servers.HUEY_CONSUMER, *servers.CONSUMER_ARGS])

    def add_project(self, name):
        """The project's id, created if missing (a cached database has it already)."""
        with psycopg2.connect(self.db_url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT id FROM projects WHERE name = %s", (name,))
            found = cursor.fetchone()
        if found is None:
            self.manage("add-project", name)
            return self.add_project(name)
        return found[0], None

    def server_cpu(self, meter):
        """CPU seconds the server (web workers, PostgreSQL, Redis; not the consumer) used since the meter started."""
        used = meter.stop()
        return sum(used["groups"][group] for group in ("logflow web", "postgres", "redis")), used


def sign_in(base_url, password):
    """A requests.Session signed in to the viewer through its form, as a browser does."""
    session = requests.Session()
    form = session.get(base_url + "/ui/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = session.post(base_url + "/ui/login", data={"username": USER, "password": password,
                                                          "csrf_token": token, "next": ""}, allow_redirects=False)
    if answer.status_code != 302 or "logflow_session" not in session.cookies:
        raise RuntimeError("sign-in failed: %d %s" % (answer.status_code, answer.text[:200]))
    return session


# ---------------------------------------------------------------- reads

def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def timed(stack, session, url, count, next_url=None, interval=0):
    """count GETs of url one after another (after two unmeasured): round trips in ms, server CPU ms per request, bytes.

    next_url(url, answer) gives the next request's URL (a live poll's cursor);
    interval spaces their starts, as the viewer's live polls are.
    """
    for _ in range(2):
        answer = session.get(url)
        answer.raise_for_status()
        url = next_url(url, answer) if next_url else url
    times, sizes, rows = [], [], []
    meter = meters.Meter(stack)
    next_start = time.monotonic()
    for _ in range(count):
        time.sleep(max(0.0, next_start - time.monotonic()))  # pacing, not synchronisation
        next_start += interval
        began = time.perf_counter()
        answer = session.get(url)
        body = answer.content
        times.append(1000 * (time.perf_counter() - began))
        answer.raise_for_status()
        sizes.append(len(body))
        if answer.headers.get("Content-Type", "").startswith("application/json") and "logs" in answer.json():
            rows.append(len(answer.json()["logs"]))
        url = next_url(url, answer) if next_url else url
    cpu, _ = stack.server_cpu(meter)
    return {"p50": statistics.median(times), "p95": percentile(times, 0.95), "cpu_ms": 1000 * cpu / count,
            "bytes": statistics.median(sizes), "rows": statistics.median(rows) if rows else None,
            "load": os.getloadavg()[0]}


def follow_live(url, answer):
    """The next live poll: the same URL with the cursor the answer gave."""
    return re.sub(r"cursor=[^&]*", "cursor=" + urllib.parse.quote(answer.json()["cursor"]), url)


def reads(stack, session, args, marker, key):
    """The server time of every read the viewer makes; returns [(name, target ms or None, result)]."""
    base, project = stack.logflow_url, "project=" + MAIN
    end = datetime.datetime.fromtimestamp(marker["end"], datetime.timezone.utc).replace(tzinfo=None)
    stamp = lambda moment: urllib.parse.quote(moment.isoformat() + "Z")
    # Ranges end where the loaded data ends, so a cache some hours old still searches full hours of logs.
    window = lambda hours: "since=%s&until=%s" % (stamp(end - datetime.timedelta(hours=hours)), stamp(end))
    with psycopg2.connect(stack.db_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id FROM logs WHERE project_id = (SELECT id FROM projects WHERE name = %s)"
                       " AND timestamp >= %s ORDER BY timestamp, id LIMIT 1", (MAIN, end - datetime.timedelta(days=3)))
        permalink = cursor.fetchone()[0]
    plan = [
        ("overview GET /ui/", "overview", base + "/ui/"),
        ("explore page (its HTML)", None, base + "/ui/projects/" + MAIN),
        ("first page, unfiltered", "first page", base + "/logs?%s&limit=100" % project),
        ("first page, level=ERROR", "first page", base + "/logs?%s&limit=100&level=ERROR" % project),
        ("histogram, 24 hours", "histogram 24h", base + "/logs/histogram?%s&%s" % (project, window(24))),
        ("histogram, 7 days", None, base + "/logs/histogram?%s&%s" % (project, window(24 * DAYS))),
        ("histogram, 24 hours, q=%s" % COMMON_WORD, None,
         base + "/logs/histogram?%s&%s&q=%s" % (project, window(24), COMMON_WORD)),
        ("permalink: context of a 3-day-old log", "permalink", base + "/logs/%s/context?%s" % (permalink, project)),
        ("search q=%s, 1 hour" % COMMON_WORD, None, base + "/logs?%s&q=%s&%s" % (project, COMMON_WORD, window(1))),
        ("search q=%s, 24 hours" % COMMON_WORD, None, base + "/logs?%s&q=%s&%s" % (project, COMMON_WORD, window(24))),
        ("search q=%s (rare), 1 hour" % RARE_WORD, None, base + "/logs?%s&q=%s&%s" % (project, RARE_WORD, window(1))),
        ("search q=%s (rare), 24 hours" % RARE_WORD, None,
         base + "/logs?%s&q=%s&%s" % (project, RARE_WORD, window(24))),
    ]
    results = []
    for name, target, url in plan:
        servers.log("timing %s" % name)
        results.append((name, TARGETS.get(target), timed(stack, session, url, args.requests)))
    cursor = session.get(base + "/logs/live?" + project).json()["cursor"]
    live_url = base + "/logs/live?%s&cursor=%s" % (project, urllib.parse.quote(cursor))
    servers.log("timing live polls, no new logs")
    results.append(("live poll, no new logs", None, timed(stack, session, live_url, args.requests, follow_live)))
    servers.log("timing live polls, 1 a second, while 100 records/s arrive")
    sender = paced_sender(stack, key, 100)
    try:
        cursor = session.get(base + "/logs/live?" + project).json()["cursor"]
        live_url = base + "/logs/live?%s&cursor=%s" % (project, urllib.parse.quote(cursor))
        polls = timed(stack, session, live_url, args.requests, follow_live, interval=1.0)
        polls["cpu_ms"] = None  # the server's CPU went to the arriving records as well
        results.append(("live poll, 1/s, 100 new logs/s arriving", None, polls))
    finally:
        sender.send_signal(signal.SIGINT)
        sender.wait()
    stack.wait_drained()
    return results


def paced_sender(stack, key, rate, connections=4):
    """wrk sending single-record POSTs at about `rate` a second until SIGINT (paced.lua)."""
    return subprocess.Popen(["wrk", "-t1", "-c%d" % connections, "-d3600s",
                             "-s", os.path.join(servers.BENCH, "paced.lua"),
                             stack.logflow_url + "/logs", "--", stack.single_body, key,
                             "%.1f" % (1000.0 * connections / rate)], stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- live viewers

class Viewers:
    """n live viewers, each with its own session, polling GET /logs/live with its cursor once a second."""

    def __init__(self, base_url, cookies, query="", project=MAIN):
        self.address = urllib.parse.urlsplit(base_url).netloc
        self.cookies, self.query, self.project = cookies, query, project
        self.stopping = threading.Event()
        self.threads = []
        self.lock = threading.Lock()
        self.times, self.logs, self.failures = [], 0, collections.Counter()

    def start(self):
        self.stopping.clear()
        self.times, self.logs, self.failures = [], 0, collections.Counter()
        self.threads = [threading.Thread(target=self.poll, args=(cookie, index / len(self.cookies)), daemon=True)
                        for index, cookie in enumerate(self.cookies)]
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        return {"polls": len(self.times), "p50": statistics.median(self.times) if self.times else 0,
                "p99": percentile(self.times, 0.99) if self.times else 0, "busy_s": sum(self.times) / 1000,
                "logs": self.logs, "failures": dict(self.failures)}

    def get(self, connection, cookie, path):
        connection.request("GET", path, headers={"Cookie": "logflow_session=" + cookie})
        answer = connection.getresponse()
        return answer.status, answer.read()

    def poll(self, cookie, phase):
        connection = http.client.HTTPConnection(self.address, timeout=30)
        base = "/logs/live?project=%s%s" % (self.project, self.query)
        status, body = self.get(connection, cookie, base)
        cursor = json.loads(body)["cursor"]
        # The client shares the server's 2 cores: the cursor is found, and the logs counted, without parsing the JSON.
        find_cursor = re.compile(rb'"cursor":"([^"]*)"')
        # Spread over the second, as viewers who opened their tabs at different moments are.
        next_poll = time.monotonic() + phase
        while not self.stopping.wait(max(0.0, next_poll - time.monotonic())):
            next_poll += 1.0
            began = time.perf_counter()
            try:
                status, body = self.get(connection, cookie, base + "&cursor=" + urllib.parse.quote(cursor))
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.failures[type(error).__name__] += 1
                connection.close()
                connection = http.client.HTTPConnection(self.address, timeout=30)
                continue
            elapsed = 1000 * (time.perf_counter() - began)
            if status != 200:
                with self.lock:
                    self.failures[status] += 1
                continue
            cursor = find_cursor.search(body).group(1).decode()
            with self.lock:
                self.times.append(elapsed)
                self.logs += body.count(b'"received_at":')
        connection.close()


def ingestion(stack, args, key, cookies):
    """Single-record POSTs at full speed and at a set rate, alone and beside 50 live viewers, in alternating order."""
    quiet = next(iter(OTHERS))
    kinds = {"alone": None,
             "viewers of %s" % quiet: Viewers(stack.viewer_url, cookies, project=quiet),
             "viewers, level=ERROR": Viewers(stack.viewer_url, cookies, "&level=ERROR"),
             "viewers, unfiltered": Viewers(stack.viewer_url, cookies)}
    names = list(kinds)
    full = {name: [] for name in names}
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            servers.log("ingestion round %d/%d, %s" % (number + 1, args.rounds, name))
            full[name].append(post_run(stack, args, key, kinds[name], "post.lua", []))
    rate = statistics.median(one["req_s"] for one in full["alone"]) / 2
    paced = {name: [] for name in names}
    pause = "%.2f" % (1000.0 * stack.args.connections / rate)
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            servers.log("paced round %d/%d at %.0f requests/s, %s" % (number + 1, args.rounds, rate, name))
            paced[name].append(post_run(stack, args, key, kinds[name], "paced.lua", [pause]))
    return full, paced, rate


def post_run(stack, args, key, viewers, script, extra):
    """One wrk run of single POSTs, with the viewers polling meanwhile if given; then the backlog drained."""
    if viewers:
        viewers.start()
        time.sleep(1.5)  # every viewer has taken its cursor and polls
    meter = meters.Meter(stack)
    result = traffic.wrk(stack.logflow_url + "/logs", script, [stack.single_body, key, *extra], args.seconds,
                     stack.args.connections, 1, latency=True)
    result["cpu"] = meter.stop()
    if viewers:
        result["viewers"] = viewers.stop()
    result["req_s"] = result["requests"] / result["seconds"]
    result["load"] = os.getloadavg()[0]
    stack.wait_drained()
    return result


def viewer_cost(stack, args, key, cookies):
    """Server CPU per viewer-second: 100 records/s arriving, without and with the viewers, CPU compared."""
    out = {}
    for name, viewers in (("alone", None), ("viewers", Viewers(stack.viewer_url, cookies))):
        servers.log("viewer cost: %s" % name)
        if viewers:
            viewers.start()
            time.sleep(1.5)
        sender = paced_sender(stack, key, 100)
        meter = meters.Meter(stack)
        time.sleep(args.seconds * 2)  # a measurement window: the CPU meter reads /proc around it
        cpu, used = stack.server_cpu(meter)
        sender.send_signal(signal.SIGINT)
        sender.wait()
        out[name] = {"cpu": cpu, "wall": used["wall"], "viewers": viewers.stop() if viewers else None,
                     "load": os.getloadavg()[0]}
        stack.wait_drained()
    return out


# ---------------------------------------------------------------- the browser

# Installed before the page's own script: notes when #logs first holds 1,000 rows, and the frame after.
WATCH_ROWS = """
window.__rows = {};
new MutationObserver(() => {
  const list = document.getElementById("logs");
  const arrived = list ? list.querySelectorAll("li.arrived").length : 0;
  const rows = list ? list.children.length : 0;
  for (const [name, count] of [["page", rows], ["live", arrived]]) {
    if (count >= 1000 && !window.__rows[name]) {
      const at = performance.now();
      window.__rows[name] = {at};
      requestAnimationFrame(() => setTimeout(() => { window.__rows[name].painted = performance.now(); }));
    }
  }
}).observe(document, {childList: true, subtree: true});
"""
# The resource timing of the latest request whose URL matches, and of the navigation.
TIMINGS = """(pattern) => {
  const matching = performance.getEntriesByType("resource").filter((entry) => entry.name.includes(pattern));
  const last = matching.filter((entry) => entry.responseEnd <= window.__rows.%s.at).pop();
  return {rows: window.__rows.%s, request: last && {start: last.requestStart, end: last.responseEnd}};
}"""


def browser(stack, args, password, key):
    """Headless chromium: 1,000 rows on a page load (limit=1000) and 1,000 live rows after a flood; ms each."""
    from playwright.sync_api import sync_playwright
    results = {"page": [], "live": []}
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        context = chromium.new_context(base_url=stack.logflow_url, viewport={"width": 1280, "height": 900})
        session = sign_in(stack.logflow_url, password)
        context.add_cookies([{"name": "logflow_session", "value": session.cookies["logflow_session"],
                              "url": stack.logflow_url}])
        context.add_init_script(WATCH_ROWS)
        tab = context.new_page()
        tab.set_default_timeout(60_000)

        def thousand(route):
            # The page asks for 100 rows; this asks for 1,000 of the same query, the most the API gives.
            route.continue_(url=route.request.url + "&limit=1000")
        tab.route(re.compile(r".*/logs\?project=.*"), thousand)
        for _ in range(args.browser_runs):
            tab.goto("/ui/projects/%s" % MAIN)
            wait_in(tab, "Boolean(window.__rows.page && window.__rows.page.painted)")
            timing = tab.evaluate(TIMINGS % ("page", "page"), "/logs?project=")
            results["page"].append(timing)
        tab.unroute(re.compile(r".*/logs\?project=.*"))
        flood = Rows(seed=99)
        for _ in range(args.browser_runs):
            tab.goto("/ui/projects/%s?live=1" % MAIN)
            tab.locator("#logs > li").nth(99).wait_for()
            time.sleep(1.5)  # the live poll has its cursor (a pause of the scenario, not synchronisation)
            now = int(time.time() * 1000000)
            # No ids: LogFlow assigns them, as for any client's records.
            body = json.dumps([{name: value for name, value in flood.record(now + index).items() if name != "id"}
                               for index in range(1000)])
            posted = time.perf_counter()
            answer = requests.post(stack.logflow_url + "/logs", data=body, headers={
                "X-API-Key": key, "Content-Type": "application/json"})
            answer.raise_for_status()
            wait_in(tab, "Boolean(window.__rows.live && window.__rows.live.painted)")
            timing = tab.evaluate(TIMINGS % ("live", "live"), "/logs/live")
            timing["after_post_ms"] = 1000 * (time.perf_counter() - posted)
            timing["shown"] = tab.evaluate("document.getElementById('logs').children.length")
            results["live"].append(timing)
        chromium.close()
    return results


def wait_in(tab, expression, timeout=60):
    """Poll a page until expression is true (wait_for_function evaluates text, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not tab.evaluate(expression):
        if time.monotonic() > deadline:
            raise RuntimeError("not true after %d s: %s" % (timeout, expression))
        time.sleep(0.05)  # polling with a deadline


def browser_figures(runs):
    """Median ms: the response's arrival to 1,000 rows in the DOM, to the next frame, and the request itself."""
    built = [one["rows"]["at"] - one["request"]["end"] for one in runs]
    painted = [one["rows"]["painted"] - one["request"]["end"] for one in runs]
    request = [one["request"]["end"] - one["request"]["start"] for one in runs]
    return statistics.median(built), statistics.median(painted), statistics.median(request), \
        "%.0f–%.0f" % (min(painted), max(painted))


# ---------------------------------------------------------------- report

def verdict(target, value):
    if target is None:
        return ""
    return "met" if value <= target else "MISSED"


def report_header(title, info):
    """The report's first lines: the command, the machine, the servers and the set-up (bench/alerts.py's too)."""
    print("%s — %s" % (title, info["date"]))
    print("command:   %s" % info["command"])
    print("machine:   %d cores, %s; commit %s; %s at start" % (info["nproc"], info["memory"], info["commit"],
                                                              info["load_start"]))
    print("servers:   %s" % info["servers"])
    print("set-up:    the Procfile's web line: %s; 1 consumer x 4 threads; PostgreSQL as tests/services.py"
          " (fsync=off, shared_buffers=128MB)" % info["web"])


def report(info, marker, loaded_now, endpoints, full, paced, rate, cost, shown, args):
    report_header("LogFlow viewer benchmark", info)
    if args.viewer_pool:
        print("viewers:   poll a second web process (the same line) at nice %d (--viewer-pool)" % VIEWER_NICENESS)
    print()
    print("data:      %d rows in project %r over %d days to %s, beside %s; %d rows in all"
          % (args.rows, MAIN, DAYS, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(marker["end"])),
             ", ".join("%s (%d)" % (name, args.rows * share) for name, share in OTHERS.items()), marker["written"]))
    if loaded_now:
        print("load:      %.0f s: COPY %.0f s (%.0f rows/s, 2 processes), VACUUM ANALYZE %.0f s, rebuild-counts %s"
              % (marker["copy_s"] + marker["vacuum_s"] + (marker["counts_s"] or 0), marker["copy_s"],
                 marker["written"] / marker["copy_s"], marker["vacuum_s"],
                 "%.0f s" % marker["counts_s"] if marker["counts_s"] is not None else "(no rollup table)"))
    else:
        print("load:      cached in %s (loaded in %.0f s when made; --fresh loads again); data %.1f h old;"
              " %d rows earlier runs sent deleted first" % (
                  os.path.join(CACHE, str(args.rows)), marker["copy_s"] + marker["vacuum_s"] + (marker["counts_s"] or 0),
                  (time.time() - marker["end"]) / 3600, info["reset"]))
    print("rollup:    %s" % ("log_counts present, filled by manage.py rebuild-counts" if info["rollup"]
                             else "none (histograms count rows)"))
    print()
    print("Reads, %d requests each after 2 unmeasured, one at a time, keep-alive, signed in (session cookie)" % args.requests)
    width = max(len(name) for name, _, _ in endpoints)
    print("%-*s  %9s  %9s  %13s  %8s  %5s  %-14s %s" % (width, "read", "p50 ms", "p95 ms", "server CPU ms",
                                                        "KiB", "rows", "target", "load"))
    for name, target, one in endpoints:
        print("%-*s  %9.1f  %9.1f  %13s  %8.1f  %5s  %-14s %.2f" % (
            width, name, one["p50"], one["p95"], "%.1f" % one["cpu_ms"] if one["cpu_ms"] is not None else "-",
            one["bytes"] / 1024,
            "%d" % one["rows"] if one["rows"] is not None else "",
            ("≤ %d: %s" % (target, verdict(target, one["p50"]))) if target else "", one["load"]))
    print("(p50 and p95: the HTTP round trip on 127.0.0.1; server CPU: web workers + PostgreSQL + Redis per request;"
          " targets judged on p50)")
    print()
    report_ingestion(full, paced, rate, args)
    report_viewer_cost(cost, args)
    if shown:
        built, painted, request, spread = browser_figures(shown["page"])
        print("Browser (headless chromium %s, 1280x900), median of %d:" % (info.get("chromium", ""), args.browser_runs))
        print("  page load with limit=1000: the response (%.0f ms to answer) to 1,000 rows in the DOM %.0f ms,"
              " to the next frame %.0f ms (%s)" % (request, built, painted, spread))
        built, painted, request, spread = browser_figures(shown["live"])
        print("  live flood of 1,000 logs in one POST: the poll's response (%.0f ms) to 1,000 new rows in the DOM"
              " %.0f ms, to the next frame %.0f ms (%s); from the POST to the frame %.0f ms; rows kept %d"
              % (request, built, painted, spread, statistics.median(one["after_post_ms"] for one in shown["live"]),
                 max(one["shown"] for one in shown["live"])))


def report_ingestion(full, paced, rate, args):
    """Single POSTs alone and beside the viewers: each figure, its ratio to alone, the CPU, the viewers' polls."""
    names = list(full)
    print("Single-record POSTs (wrk -t1 -c%d, %d s a run, %d round(s), kinds in alternating order), median"
          " (min–max) [with/alone]; viewers: %d, each polling GET /logs/live once a second with its own session"
          % (args.connections, args.seconds, args.rounds, args.viewers))
    width = 32
    print("%-26s  %s" % ("", "".join("%-*s" % (width, name) for name in names)))
    rows = [("full speed: requests/s", full, "req_s", "%.0f"), ("full speed: p50 ms", full, "p50", "%.1f"),
            ("full speed: p99 ms", full, "p99", "%.1f"),
            ("at %.0f/s: requests/s" % rate, paced, "req_s", "%.0f"), ("at %.0f/s: p50 ms" % rate, paced, "p50", "%.1f"),
            ("at %.0f/s: p99 ms" % rate, paced, "p99", "%.1f")]
    for label, runs, field, fmt in rows:
        alone = reporting.median(runs["alone"], field)
        print("%-26s  %s" % (label, "".join("%-*s" % (width, reporting.spread(runs[name], field, fmt) + (
            " [%.2f]" % (reporting.median(runs[name], field) / alone) if name != "alone" else "")) for name in names)))
    for label, runs in (("full speed", full), ("at %.0f/s" % rate, paced)):
        groups = (("web", "logflow web"), ("cons.", "consumers"), ("pg", "postgres"), ("redis", "redis"))
        print("%-26s  %s" % (label + ": CPU, % of a core", "".join("%-*s" % (width, " ".join(
            "%s %.0f" % (short, 100 * cpu_median(runs[name], group)) for short, group in groups))
            for name in names)))
        print("%-26s  %s" % ("  bench+viewers+wrk, other", "".join("%-*s" % (width, "%.0f, %.0f" % (
            100 * statistics.median(one["cpu"]["bench"] / one["cpu"]["wall"] for one in runs[name]),
            100 * statistics.median(one["cpu"]["other"] / one["cpu"]["wall"] for one in runs[name])))
            for name in names)))
        print("%-26s  %s" % ("  live polls: p50/p99 ms", "".join("%-*s" % (width, "" if name == "alone" else "%.0f/%.0f, %d logs a poll" % (
            statistics.median(one["viewers"]["p50"] for one in runs[name]),
            statistics.median(one["viewers"]["p99"] for one in runs[name]),
            sum(one["viewers"]["logs"] for one in runs[name]) / max(1, sum(one["viewers"]["polls"] for one in runs[name]))))
            for name in names)))
    failures = sum((collections.Counter(one["viewers"]["failures"]) for runs in (full, paced) for name in names[1:]
                    for one in runs[name]), collections.Counter())
    every = [one for runs in (full, paced) for name in names for one in runs[name]]
    print("wrk: non-2xx or socket errors %d; live polls failed: %s; load during the runs %.2f–%.2f" % (
        sum(one["non2xx"] + one["socket_errors"] for one in every), dict(failures) or "none",
        min(one["load"] for one in every), max(one["load"] for one in every)))
    print()


def cpu_median(runs, group):
    """The median share of a core a group of processes used in these runs."""
    return statistics.median(one["cpu"]["groups"][group] / one["cpu"]["wall"] for one in runs)


def report_slow_statements(stack):
    """The statements PostgreSQL logged as slower than SLOW_MS during the run: how many, and the slowest few."""
    with open(stack.pg.log_path, errors="replace") as server_log:
        server_log.seek(stack.log_start)
        text = server_log.read()
    found = [(float(ms), " ".join(statement.split()))
             for ms, statement in re.findall(r"duration: ([\d.]+) ms\s+statement: (.*?)(?=\n\S|\Z)", text, re.S)
             # The benchmark's own: reset() and after_burst()'s count.
             if not statement.startswith(("VACUUM", "DELETE", "SELECT count(*)"))]
    print("LogFlow's PostgreSQL statements slower than %d ms during the run: %d (%s)" % (SLOW_MS, len(found), stack.pg.log_path))
    for ms, statement in sorted(found, reverse=True)[:5]:
        print("  %7.0f ms  %s" % (ms, statement[:300]))


def report_viewer_cost(cost, args):
    """The server CPU and time one live viewer costs per second, against the target."""
    seen = cost["viewers"]["viewers"]
    viewer_seconds = args.viewers * cost["viewers"]["wall"]
    extra = (cost["viewers"]["cpu"] / cost["viewers"]["wall"] - cost["alone"]["cpu"] / cost["alone"]["wall"]) \
        * cost["viewers"]["wall"]
    per_viewer, busy = 1000 * extra / viewer_seconds, 1000 * seen["busy_s"] / viewer_seconds
    print("Live viewers' cost, 100 records/s arriving (wrk, paced), %.0f s without then with %d viewers of that"
          " project: server CPU (web, PostgreSQL, Redis) %.0f%% then %.0f%% of a core; load %.2f"
          % (cost["alone"]["wall"], args.viewers, 100 * cost["alone"]["cpu"] / cost["alone"]["wall"],
             100 * cost["viewers"]["cpu"] / cost["viewers"]["wall"], cost["viewers"]["load"]))
    print("  per viewer per second: %.1f ms of server CPU — target ≤ %d ms: %s" % (
        per_viewer, LIVE_TARGET_MS, verdict(LIVE_TARGET_MS, per_viewer)))
    print("  and %.1f ms of poll round trips (%d polls, p50 %.1f ms, p99 %.1f ms, %.1f logs a poll: %d viewers"
          " share 2 cores and 8 threads, so a poll also waits for the others)" % (
              busy, seen["polls"], seen["p50"], seen["p99"], seen["logs"] / max(1, seen["polls"]), args.viewers))
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="logs in the main project (default 10,000,000)")
    parser.add_argument("--requests", type=int, default=20, help="measured requests per read (default 20)")
    parser.add_argument("--fresh", action="store_true", help="load the data again even if cached")
    parser.add_argument("--max-age", type=float, default=24,
                        help="hours after which cached data is loaded afresh (default 24)")
    parser.add_argument("--viewers", type=int, default=50, help="live viewers beside ingestion (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ingestion comparison (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--browser-runs", type=int, default=3, help="page loads and floods in chromium (default 3)")
    parser.add_argument("--no-browser", action="store_true", help="skip chromium")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (process logs)")
    parser.add_argument("--viewer-pool", action="store_true",
                        help="live viewers poll a second web process at nice %d, not the one POSTs go to"
                             % VIEWER_NICENESS)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    info = reporting.machine()
    info.update(command=shlex.join(["python3", *sys.argv]), load_start=load_text())
    workdir = tempfile.mkdtemp(prefix="logflow-bench-viewer-")
    stack_args = argparse.Namespace(workers=None, threads=None, consumers=1, gunicorn_arg=[], balance=False,
                                    connections=args.connections, wrk_threads=1, aof=False,
                                    viewer_pool=args.viewer_pool)
    with servers.removed_unless_kept(workdir, args):
        with ViewerStack(stack_args, workdir) as stack:
            server, marker, marker_path = open_cache(args)
            stack.start_servers(server)
            loaded_now = marker is None
            if loaded_now:
                servers.log("loading %d rows (cached in %s for the next runs)" % (args.rows, server.base))
                marker = load(stack, args, marker_path)
            else:
                info["reset"] = reset(stack, marker)
            with psycopg2.connect(stack.db_url) as connection, connection.cursor() as cursor:
                cursor.execute("SELECT to_regclass('log_counts') IS NOT NULL")
                info["rollup"] = cursor.fetchone()[0]
            stack.start_processes()
            info["web"] = web.describe(stack.web)
            key = stack.manage("create-key", MAIN)
            stack.single_body = stack.write_body("single.json", servers.log_record(0))
            password = secrets.token_urlsafe(16)
            created = subprocess.run([sys.executable, "manage.py", "create-user", USER, "--all-projects",
                                      "--password-stdin"], cwd=servers.ROOT, env=stack.env, input=password + "\n",
                                     capture_output=True, text=True)
            if created.returncode:  # a cached database has the user: a new password for this run
                subprocess.run([sys.executable, "manage.py", "set-password", USER, "--password-stdin"],
                               cwd=servers.ROOT, env=stack.env, input=password + "\n", check=True, capture_output=True,
                               text=True)
            session = sign_in(stack.logflow_url, password)
            endpoints = reads(stack, session, args, marker, key)
            servers.log("signing %d viewers in" % args.viewers)
            cookies = [sign_in(stack.logflow_url, password).cookies["logflow_session"] for _ in range(args.viewers)]
            full, paced, rate = ingestion(stack, args, key, cookies)
            cost = viewer_cost(stack, args, key, cookies)
            endpoints.append(after_burst(stack, session, args, marker))
            shown = None
            if not args.no_browser:
                servers.log("chromium: 1,000 rows")
                info["chromium"] = re.search(r"[\d.]+", subprocess.run(
                    ["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout).group(0)
                shown = browser(stack, args, password, key)
    report(info, marker, loaded_now, endpoints, full, paced, rate, cost, shown, args)
    print()
    report_slow_statements(stack)
    print("\ntook %.0f s; %s at the end" % (time.monotonic() - began, load_text()))


if __name__ == "__main__":
    main()
