"""The benchmark's stack: Redis, PostgreSQL, gunicorns and huey consumers on 127.0.0.1, started, watched and stopped.

bench/run.py, bench/viewer.py and the other benchmarks share it. Importing
it puts the repository's root and tests/ on sys.path, for LogFlow's modules
and tests/services.py.
"""
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import psycopg2  # noqa: E402
import redis  # noqa: E402

import services  # noqa: E402  (tests/services.py: throwaway PostgreSQL and Redis)
import spool_redis  # noqa: E402  (read-only: how many requests still wait for a writer)
import web  # noqa: E402  (bench/web.py: the Procfile's web line)

# The consumer as docs/production.md's service runs it. The Procfile's
# worker line adds --delay 0.05 --max-delay 0.5: polling delays, which Huey
# uses only after a failed queue read, as its Redis dequeue blocks.
CONSUMER_ARGS = ["tasks.huey", "--worker-type", "thread", "--workers", "4",
                 "--graceful-signal", "TERM", "--quiet"]
HUEY_CONSUMER = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
WRITERS = ("db", "file")
GROUPS = ("logflow web", "consumers", "redis", "postgres", "hello web")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def removed_unless_kept(workdir, args):
    """Run the benchmark's body; then remove its work folder, unless --keep or the body failed (it says where)."""
    try:
        yield
    except BaseException:
        log("failed; the processes' logs are in %s" % workdir)
        args.keep = True
        raise
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def log(message):
    """Progress on stderr, so stdout holds only the report."""
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the stack

class Stack:
    """Redis, PostgreSQL, two gunicorns (LogFlow, hello) and N consumers; close() stops them all.

    Both gunicorns run the Procfile's web line (bench/web.py), hello with only
    the app changed, plus web_args: the benchmark's own flags.
    """

    def __init__(self, args, workdir):
        self.args, self.workdir = args, workdir
        self.processes = []  # (name, Popen), stopped in reverse order

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        """Start every server and process, and write the bodies wrk sends."""
        self.redis = services.start_redis(os.path.join(self.workdir, "redis"), appendonly=self.args.aof)
        if self.args.aof:  # production's advice, not services.py's "always"
            redis.Redis.from_url(self.redis.url).config_set("appendfsync", "everysec")
        self.pg = services.start_postgres(os.path.join(self.workdir, "pg"))
        self.db_url = self.pg.url
        self.set_environment()
        self.manage("init-db")
        self.spool = spool_redis.RedisSpool(self.redis.url, 30)
        self.web_args = self.web_flags()
        self.web = web.settings(self.env, extra_args=self.web_args)
        self.logflow_url = self.start_gunicorn("logflow")
        self.hello_url = self.start_gunicorn("hello", "bench.hello:app")
        for number in range(self.args.consumers):
            self.spawn("consumer-%d" % number, [sys.executable, HUEY_CONSUMER, *CONSUMER_ARGS])
        self.single_body = self.write_body("single.json", log_record(0))
        self.batch_body = self.write_body("batch.json", [log_record(i) for i in range(100)])

    def set_environment(self):
        """Set self.env, what every process of the stack runs with: this shell's, the servers' URLs, the work folder."""
        self.log_dir = os.path.join(self.workdir, "logs")
        # LogFlow's defaults, whatever this shell exports (a .env file still applies, as in production).
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("LOGFLOW_")}
        self.env = {**inherited, "DATABASE_URL": self.db_url, "REDIS_URL": self.redis.url,
                    "LOGFLOW_LOG_DIR": self.log_dir,
                    "LOGFLOW_DATA_DIR": os.path.join(self.workdir, "data"),
                    # Production's web process refuses to start without one.
                    "LOGFLOW_SECRET_KEY": secrets.token_urlsafe(32)}

    def spawn(self, name, argv, env=None):
        """Start a child with its output in <workdir>/<name>.log, in its own session so Ctrl-C reaches only us."""
        with open(os.path.join(self.workdir, name + ".log"), "wb") as output:
            process = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))
        return process

    def web_flags(self):
        """The benchmark's flags after the web line's: --threads, --gunicorn-arg, then balance_args().

        --workers goes through WEB_CONCURRENCY, the variable the line reads.
        """
        if self.args.workers:
            self.env["WEB_CONCURRENCY"] = str(self.args.workers)
        own = (["--threads", str(self.args.threads)] if self.args.threads else []) + self.args.gunicorn_arg
        return own + self.balance_args(web.settings(self.env, extra_args=own).workers)

    def start_gunicorn(self, name, app=None, extra_args=()):
        """The Procfile's web line serving app (LogFlow by default) on a free port; its base URL once /healthz answers.

        extra_args follow web_args (e.g. another --worker-class: the last flag wins).
        """
        port = services._free_port()
        self.spawn(name, web.argv(app, self.web_args + list(extra_args)), web.environment(self.env, port))
        url = "http://127.0.0.1:%d" % port
        deadline = time.monotonic() + 30
        while True:
            self.check_alive()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return url
            if time.monotonic() > deadline:
                raise RuntimeError("%s: no /healthz after 30 s" % name)
            time.sleep(0.1)

    def balance_args(self, workers):
        """--worker-connections so that wrk's connections split evenly over the workers, with --balance only.

        Plain gthread workers keep the keep-alive connections they accept, and
        wrk opens all of them at once: one worker often took them all and ran
        on one core, so a run measured luck. In two full runs at 17696a2 and
        df89c81, hello's single POSTs: 3,532 against 8,701 requests/s;
        LogFlow's 1,980 against 4,069, its batches 76,190-82,066 against
        105,104-121,632 records/s. Without the flag, one worker did 70 % or more
        of the web work in 1 and 3 of 32 runs on the web line's
        server.BufferingWorker (7 and 5 on plain gthread); with it,
        BufferingWorker closed new connections unanswered: a --quick run
        dropped 581 of its 5,000 single POSTs and 807 burst requests, each
        costing exact.lua 5 quiet seconds (docs/benchmarks.md, "Worker
        class"). Hence off by default.
        """
        if not self.args.balance or any("worker-connections" in arg for arg in self.args.gunicorn_arg):
            return []
        return ["--worker-connections", str(-(-self.args.connections // workers))]

    def check_alive(self):
        """Fail, with its output, if a child has exited."""
        for name, process in self.processes:
            if process.poll() is not None:
                with open(os.path.join(self.workdir, name + ".log"), errors="replace") as output:
                    tail = "".join(output.readlines()[-20:])
                raise RuntimeError("%s exited with %s:\n%s" % (name, process.returncode, tail))

    def manage(self, *args):
        """Run manage.py with the stack's environment; returns its stdout."""
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                              check=True, capture_output=True, text=True).stdout.strip()

    def add_project(self, name):
        """Create a project; returns (id, API key)."""
        key = self.manage("add-project", name)
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM projects WHERE name = %s", (name,))
            return cur.fetchone()[0], key

    def write_body(self, name, value):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as body:
            json.dump(value, body)
        return path

    def depth(self):
        """Requests still waiting for a writer, queued or leased."""
        return sum(self.spool.depth(writer) for writer in WRITERS)

    def wait_drained(self, timeout=600):
        """Poll the spool until every writer's queue is empty; returns the monotonic time it was seen empty.

        A batch leaves the spool only once written (acknowledged after the
        write), so an empty spool means everything accepted is stored or
        quarantined; stored() then counts to tell which.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            seen = time.monotonic()
            if self.depth() == 0:
                return seen
            if seen > deadline:
                raise RuntimeError("spool not drained after %d s (%d requests left)" % (timeout, self.depth()))
            time.sleep(0.1)

    def stored(self, project_id):
        """(rows in logs, lines in the daily files) of one project."""
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM logs WHERE project_id = %s", (project_id,))
            rows = cur.fetchone()[0]
        lines = 0
        folder = os.path.join(self.log_dir, str(project_id))
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            with open(os.path.join(folder, name), "rb") as daily:
                while chunk := daily.read(1 << 20):
                    lines += chunk.count(b"\n")
        return rows, lines

    def wal_position(self):
        """PostgreSQL's current WAL position in bytes: two readings give the WAL written between them."""
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
            return int(cur.fetchone()[0])

    def disk_bytes(self, project_id):
        """(bytes of the logs table with its indexes and TOAST, bytes of the project's daily files)."""
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_total_relation_size('logs')")
            table = cur.fetchone()[0]
        folder = os.path.join(self.log_dir, str(project_id))
        files = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) \
            if os.path.isdir(folder) else 0
        return table, files

    def pids(self):
        """{pid: label} of every process of the stack: gunicorn masters and workers, consumers, redis, postgres."""
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    children.setdefault(proc_stat(int(entry))["ppid"], []).append(int(entry))
        # One Redis, or each node of a cluster (tests/services.py's RedisClusterServers).
        labels = {server._proc.pid: "redis-server" for server in getattr(self.redis, "nodes", [self.redis])}
        for name, process in self.processes:
            if name.startswith("consumer"):
                labels[process.pid] = name
            else:
                labels[process.pid] = "%s gunicorn master" % name
                for number, pid in enumerate(sorted(children.get(process.pid, ()))):
                    labels[pid] = "%s gunicorn worker %d" % (name, number)
        with open(os.path.join(self.pg.datadir, "postmaster.pid")) as pidfile:
            postmaster = int(pidfile.readline())
        labels[postmaster] = "postgres postmaster"
        for pid in children.get(postmaster, ()):
            labels[pid] = "postgres backend"  # grouped: many, some short-lived
        return labels

    def cpu(self):
        """CPU seconds used so far per group (GROUPS) and per gunicorn worker.

        A group counts its live processes and the children its master reaped.
        """
        used, workers = dict.fromkeys(GROUPS, 0.0), {}
        for pid, label in self.pids().items():
            with contextlib.suppress(OSError):
                stat = proc_stat(pid)
                # A master's reaped children (postgres backends, gunicorn workers) count in its cutime.
                seconds = stat["cpu"] + (stat["children_cpu"] if "master" in label or "postmaster" in label else 0)
                used[group_of(label)] += seconds
                if "worker" in label:
                    workers[label] = stat["cpu"]
        return used, workers

    def close(self):
        """SIGTERM every child (consumers finish their batch), newest first; then the servers."""
        self.stop_processes()
        services.shutdown_all()

    def stop_processes(self):
        """SIGTERM every child (consumers finish their batch), newest first, and wait for them."""
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for name, process in reversed(self.processes):
            try:
                process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def group_of(label):
    """The GROUPS entry a process label belongs to."""
    for prefix, group in (("logflow", "logflow web"), ("hello", "hello web"), ("consumer", "consumers"),
                          ("redis", "redis"), ("postgres", "postgres")):
        if label.startswith(prefix):
            return group
    raise ValueError(label)


def log_record(number):
    """One log-shaped record, as a typical web service would send it (no id: LogFlow assigns one)."""
    return {"message": "GET /api/users/%d 200 12ms" % number, "level": "info",
            "metadata": {"user_id": number, "path": "/api/users", "status": 200, "duration_ms": 12}}


def proc_stat(pid):
    """ppid, CPU seconds (own, and of reaped children) and RSS (MiB) of a process, from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rpartition(")")[2].split()
    return {"ppid": int(fields[1]), "cpu": (int(fields[11]) + int(fields[12])) / CLOCK_TICK,
            "children_cpu": (int(fields[13]) + int(fields[14])) / CLOCK_TICK, "rss": int(fields[21]) * PAGE_MIB}
