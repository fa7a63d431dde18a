#!/usr/bin/env python3
"""LogFlow's benchmark: real Redis, PostgreSQL, gunicorn and huey consumers on 127.0.0.1, driven by wrk.

    python3 bench/run.py            # full: medians of 3 runs each (about 4 minutes)
    python3 bench/run.py --quick    # one shorter run of each (about 40 s)

Measures single-record POSTs, 100-record batches, end-to-end delivery (until
every record is in PostgreSQL and in the daily files), a large burst (drain
time, lost records, peak memory of every process), the CPU each process used
in each phase, and beside them the ceilings: a hello-world Flask app under the
same gunicorn, and raw COPY into a table shaped like `logs`.
docs/benchmarks.md explains the figures.
"""
import argparse
import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import re
import resource
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
import urllib.request
import uuid

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import psycopg2  # noqa: E402
import redis  # noqa: E402

import services  # noqa: E402  (tests/services.py: throwaway PostgreSQL and Redis)
import records  # noqa: E402  (the ids LogFlow makes, for the COPY ceiling's rows)
import spool  # noqa: E402  (read-only: how many requests still wait for a writer)
import web  # noqa: E402  (bench/web.py: the Procfile's web line)

# The consumer as the README's production section runs it. The Procfile's
# worker line adds --delay 0.05 --max-delay 0.5: polling delays, which Huey
# uses only after a failed queue read, as its Redis dequeue blocks.
CONSUMER_ARGS = ["tasks.huey", "--worker-type", "thread", "--workers", "4",
                 "--graceful-signal", "TERM", "--quiet"]
HUEY_CONSUMER = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
WRITERS = ("db", "file")
GROUPS = ("logflow web", "consumers", "redis", "postgres", "hello web")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20

# Seconds per throughput run, records per end-to-end run, repeats (medians).
PLANS = {
    "full": dict(seconds=10, repeats=3, e2e_single=20_000, e2e_batch=300_000,
                 burst=1_000_000, copy_rows=300_000),
    "quick": dict(seconds=5, repeats=1, e2e_single=5_000, e2e_batch=50_000,
                  burst=200_000, copy_rows=50_000),
}


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
        self.log_dir = os.path.join(self.workdir, "logs")
        # LogFlow's defaults, whatever this shell exports (a .env file still applies, as in production).
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("LOGFLOW_")}
        self.env = {**inherited, "DATABASE_URL": self.db_url, "REDIS_URL": self.redis.url,
                    "LOGFLOW_LOG_DIR": self.log_dir,
                    "LOGFLOW_DATA_DIR": os.path.join(self.workdir, "data"),
                    # Production's web process refuses to start without one.
                    "LOGFLOW_SECRET_KEY": secrets.token_urlsafe(32)}
        self.manage("init-db")
        self.spool = spool.RedisSpool(self.redis.url, 30)
        self.web_args = self.web_flags()
        self.web = web.settings(self.env, extra_args=self.web_args)
        self.logflow_url = self.start_gunicorn("logflow")
        self.hello_url = self.start_gunicorn("hello", "bench.hello:app")
        for number in range(self.args.consumers):
            self.spawn("consumer-%d" % number, [sys.executable, HUEY_CONSUMER, *CONSUMER_ARGS])
        self.single_body = self.write_body("single.json", log_record(0))
        self.batch_body = self.write_body("batch.json", [log_record(i) for i in range(100)])

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

    def pids(self):
        """{pid: label} of every process of the stack: gunicorn masters and workers, consumers, redis, postgres."""
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    children.setdefault(proc_stat(int(entry))["ppid"], []).append(int(entry))
        labels = {self.redis._proc.pid: "redis-server"}
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
        services.shutdown_all()


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


def machine_busy():
    """CPU seconds all cores have been busy since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:8]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICK  # less idle and iowait


class Meter:
    """CPU seconds per group over a phase, and what other processes on the machine used meanwhile."""

    def __init__(self, stack):
        self.stack = stack
        self.start = self.snapshot()

    def snapshot(self):
        ours = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        groups, workers = self.stack.cpu()
        return {"wall": time.monotonic(), "busy": machine_busy(), "groups": groups, "workers": workers,
                # This script and what it ran and reaped (wrk, manage.py).
                "bench": sum(usage.ru_utime + usage.ru_stime for usage in ours)}

    def stop(self):
        """{"wall", "groups": {group: CPU s}, "workers", "bench", "other"}: other = busy cores minus everything ours."""
        end, start = self.snapshot(), self.start
        groups = {group: end["groups"][group] - start["groups"][group] for group in GROUPS}
        bench = end["bench"] - start["bench"]
        busy = end["busy"] - start["busy"]
        workers = {label: end["workers"][label] - start["workers"].get(label, 0) for label in end["workers"]}
        return {"wall": end["wall"] - start["wall"], "groups": groups, "workers": workers, "bench": bench,
                "other": max(0.0, busy - sum(groups.values()) - bench)}


# ---------------------------------------------------------------- wrk

def wrk(url, script, args, seconds, connections, threads, latency=False):
    """Run wrk for `seconds`; returns its parsed summary."""
    argv = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s",
            "-s", os.path.join(BENCH, script)] + (["--latency"] if latency else []) + [url, "--", *args]
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return parse_wrk(output)


def parse_wrk(output):
    """Requests, seconds, non-2xx, socket errors and latency percentiles (ms) from wrk's output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    seconds = float(done.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[done.group(3)]
    result = {"requests": int(done.group(1)), "seconds": seconds,
              "non2xx": int(re.search(r"Non-2xx or 3xx responses: (\d+)", output).group(1))
              if "Non-2xx" in output else 0,
              "socket_errors": sum(map(int, re.findall(r"(?:connect|read|write|timeout) (\d+)", output)))}
    units = {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}
    for percent, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M):
        result["p" + percent] = float(value) * units[unit]
    return result


def send_exact(url, body, key, requests, connections, threads, cap_seconds=900):
    """POST `body` until `requests` got 202 (exact.lua); returns the totals of its DONE lines and the seconds taken."""
    assert requests % threads == 0, "requests must divide evenly among wrk threads"
    argv = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % cap_seconds, "--timeout", "30s",
            "-s", os.path.join(BENCH, "exact.lua"), url + "/logs", "--", body, key, str(requests // threads)]
    start = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    totals, done = {"accepted": 0, "refused": 0, "dropped": 0}, 0
    try:
        for line in process.stdout:
            if line.startswith("DONE"):
                for name, value in (part.split("=") for part in line.split()[1:]):
                    totals[name] += int(value)
                done += 1
                if done == threads:
                    break
        seconds = time.monotonic() - start
        process.send_signal(signal.SIGINT)  # wrk's main thread sleeps until -d; SIGINT wakes it
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if done < threads:
        raise RuntimeError("wrk stopped before every request got its 202 (cap %d s)" % cap_seconds)
    return totals, seconds


# ---------------------------------------------------------------- measurements

def throughput(stack, base_url, body, key, seconds, per_request):
    """Requests/s, records/s accepted (2xx only), p50 and p99 of one wrk run, and the CPU it took."""
    meter = Meter(stack)
    result = wrk(base_url + "/logs", "post.lua", [body, key], seconds,
                 stack.args.connections, stack.args.wrk_threads, latency=True)
    result["cpu"] = meter.stop()
    accepted = result["requests"] - result["non2xx"]
    result.update(req_s=result["requests"] / result["seconds"],
                  records_s=accepted * per_request / result["seconds"])
    # LogFlow's backlog would take CPU from the next measurement.
    stack.wait_drained()
    stack.spool.client.delete("hello:queue")
    return result


def paced(stack, base_url, body, key, seconds, rate):
    """p50 and p99 of single-record POSTs sent at about `rate` requests/s (paced.lua), and the rate reached."""
    pause_ms = 1000.0 * stack.args.connections / rate
    result = wrk(base_url + "/logs", "paced.lua", [body, key, "%.2f" % pause_ms], seconds,
                 stack.args.connections, stack.args.wrk_threads, latency=True)
    result["req_s"] = result["requests"] / result["seconds"]
    stack.wait_drained()
    return result


def end_to_end(stack, name, body, per_request, records, sampler=None):
    """Send `records` records, then poll until all are in PostgreSQL and in the files; records/s of the whole."""
    project_id, key = stack.add_project(name)
    meter = Meter(stack)
    if sampler:
        sampler.start()
    sent, sending = send_exact(stack.logflow_url, body, key, records // per_request,
                               stack.args.connections, stack.args.wrk_threads)
    finished = stack.wait_drained()
    cpu = meter.stop()
    if sampler:
        sampler.stop()
    rows, lines = stack.stored(project_id)
    accepted = sent["accepted"] * per_request  # records answered 202: each must be stored
    seconds = finished - meter.start["wall"]
    return {"records": accepted, "seconds": seconds, "records_s": accepted / seconds,
            "sending_s": sending, "accepted_s": accepted / sending, "refused": sent["refused"],
            "dropped": sent["dropped"], "rows": rows, "lines": lines,
            "lost_db": max(0, accepted - rows), "lost_files": max(0, accepted - lines),
            # Stored beyond the 202s: requests whose answer never reached wrk (dropped connections).
            "unanswered_stored": max(rows, lines) - accepted, "cpu": cpu}


def copy_ceiling(stack, rows):
    """Raw COPY (psycopg2 copy_expert) of log-shaped rows into a scratch table shaped like logs; rows/s."""
    project_id, _ = stack.add_project("copy-%s" % uuid.uuid4().hex[:8])
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat()
    lines = []
    for number in range(rows):
        record = log_record(number)
        lines.append("\t".join([records.random_uuid(), str(project_id), "INFO", record["message"],
                                json.dumps(record["metadata"]), now, now]))
    data = ("\n".join(lines) + "\n").encode()
    with psycopg2.connect(stack.db_url) as conn, conn.cursor() as cur:
        # Same columns, primary key, index and foreign key as logs.
        cur.execute("DROP TABLE IF EXISTS bench_copy;"
                    " CREATE TABLE bench_copy (LIKE logs INCLUDING ALL);"
                    " ALTER TABLE bench_copy ADD FOREIGN KEY (project_id) REFERENCES projects (id)")
        conn.commit()
        meter = Meter(stack)
        start = time.monotonic()
        cur.copy_expert("COPY bench_copy (id, project_id, level, message, metadata, timestamp,"
                        " received_at) FROM STDIN", io.BytesIO(data))
        conn.commit()
        seconds = time.monotonic() - start
        cpu = meter.stop()
        cur.execute("DROP TABLE bench_copy")
    return {"rows": rows, "seconds": seconds, "records_s": rows / seconds, "cpu": cpu}


class Sampler:
    """Peak RSS of every LogFlow process (from /proc) and the spool's peak backlog, sampled every ~0.5 s in a thread."""

    def __init__(self, stack, interval=0.5):
        self.stack, self.interval = stack, interval
        self.peak = {}      # label → peak MiB (postgres backends: the largest one)
        self.backends = 0   # most postgres backends at once
        self.total = 0      # peak of the sum over all processes
        self.queued = 0     # most records waiting in one writer's queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self):
        total, backends = 0, 0
        for pid, label in self.stack.pids().items():
            if label.startswith("hello"):
                continue  # the ceiling's gunicorn idles meanwhile
            with contextlib.suppress(OSError):  # exited since the listing
                rss = proc_stat(pid)["rss"]
                total += rss
                backends += label == "postgres backend"
                self.peak[label] = max(self.peak.get(label, 0), rss)
        self.total = max(self.total, total)
        self.backends = max(self.backends, backends)
        self.queued = max([self.queued] + [self.stack.spool.queued_records(writer) for writer in WRITERS])


def start_profiles(stack, seconds, out_dir):
    """py-spy record (raw folded stacks) of every LogFlow gunicorn worker and consumer for `seconds`.

    Two views each: "cpu" samples only the thread holding the GIL (where the
    process spends its Python CPU), "wall" every active thread (where requests
    and batches wait, e.g. on Redis or PostgreSQL).
    """
    spies = []
    for pid, label in stack.pids().items():
        if label.startswith("logflow gunicorn worker") or label.startswith("consumer"):
            for view, flags in (("cpu", ["--gil"]), ("wall", [])):
                path = os.path.join(out_dir, "%s.%s.spy" % (label.replace(" ", "_"), view))
                spies.append(subprocess.Popen(
                    ["py-spy", "record", "--nonblocking", "--format", "raw", "-d", str(seconds),
                     "-p", str(pid), "-o", path, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def read_profile(path, own_files=("logflow.py", "records.py", "spool.py", "tasks.py", "storage.py", "models.py")):
    """From a py-spy raw profile: samples, the top functions by own time, and LogFlow's functions by total time."""
    own, total, samples = {}, {}, 0
    with open(path) as profile:
        for line in profile:
            stack, _, count = line.rstrip().rpartition(" ")
            # "func (file.py:123)" → "func (file.py)": a function's lines count as one.
            frames, count = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")], int(count)
            samples += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                if any("(%s)" % name in frame for name in own_files):
                    total[frame] = total.get(frame, 0) + count
    top = lambda counts: [(n / samples, name) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6]]
    return {"samples": samples, "own": top(own), "logflow_total": top(total)}


# ---------------------------------------------------------------- report

def machine():
    """Facts for the report header."""
    def version(argv):
        result = subprocess.run(argv, capture_output=True, text=True)
        return (result.stdout or result.stderr).splitlines()[0].strip()
    with open("/proc/meminfo") as meminfo:
        memory = int(meminfo.readline().split()[1]) / 2**20
    packages = ", ".join("%s %s" % (name, importlib.metadata.version(name)) for name in
                         ("gunicorn", "flask", "huey", "peewee", "psycopg2-binary", "redis", "orjson"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "memory": "%.1f GiB" % memory, "commit": commit,
        "python": sys.version.split()[0], "packages": packages,
        "servers": "%s; %s; %s" % (version(["redis-server", "--version"]).split(" sha=")[0],
                                   version([os.path.join(services._pg_bindir(), "postgres"), "--version"]),
                                   version(["wrk", "--version"]).split(" Copyright")[0]),
    }


def other_load(seconds=1.0):
    """Share of all cores busy over `seconds` before anything of ours runs: the machine's other load."""
    start = machine_busy()
    time.sleep(seconds)
    return (machine_busy() - start) / (seconds * os.cpu_count())


def median(runs, field):
    return statistics.median(run[field] for run in runs)


def spread(runs, field, fmt):
    """The median, and min–max when there were several runs."""
    text = fmt % median(runs, field)
    if len(runs) > 1:
        text += " (%s–%s)" % (fmt % min(r[field] for r in runs), fmt % max(r[field] for r in runs))
    return text


def cpu_median(runs, group):
    return statistics.median(run["cpu"]["groups"][group] for run in runs)


def report(info, results, args, plan):
    """Print the header, the table against the ceilings, the burst, the CPU per phase and the profiles."""
    report_header(info, results, args, plan)
    report_ceilings(results, plan)
    report_burst(results["burst"])
    report_cpu(results, plan)
    report_profiles(results.get("profile", {}))


def report_header(info, r, args, plan):
    print("LogFlow benchmark — %s" % info["date"])
    print("command:   %s" % info["command"])
    print("machine:   %d cores, %s; commit %s" % (info["nproc"], info["memory"], info["commit"]))
    print("versions:  Python %s; %s" % (info["python"], info["packages"]))
    print("servers:   %s" % info["servers"])
    print("set-up:    the Procfile's web line: %s (LogFlow and hello alike); %d consumer(s) x 4"
          " threads; wrk -t%d -c%d" % (info["web"], args.consumers, args.wrk_threads, args.connections))
    print("           Redis AOF %s; PostgreSQL fsync=off, synchronous_commit=off, full_page_writes=off"
          " (tests/services.py)" % ("on, everysec" if args.aof else "off"))
    every = [run for key in r if key in PHASES for run in (r[key] if isinstance(r[key], list) else [r[key]])]
    other = sum(run["cpu"]["other"] for run in every) / sum(run["cpu"]["wall"] for run in every)
    print("load:      1-min load average %.2f at start, %.2f at end; other processes used %.0f%% of the %d cores"
          " just before, %.0f%% during the measurements" % (info["load_start"], info["load_end"],
                                                           100 * info["busy_start"], info["nproc"], 100 * other / info["nproc"]))
    print("runs:      %s; %d s per throughput run" % (
        "1 each" if plan["repeats"] == 1 else "median of %d, (min–max); LogFlow and hello interleaved"
        % plan["repeats"], plan["seconds"]))


def report_ceilings(r, plan):
    print()
    copy = median(r["copy"], "records_s")
    rows = [
        ("single POST: requests/s", r["single"], r["hello_single"], "req_s", "%.0f"),
        ("single POST: requests/s vs hello + LPUSH", r["single"], r["queued_single"], "req_s", "%.0f"),
        ("single POST: p50 latency ms", r["single"], r["hello_single"], "p50", "%.1f"),
        ("single POST: p99 latency ms", r["single"], r["hello_single"], "p99", "%.1f"),
        ("100-record batches: records/s accepted", r["batch"], r["hello_batch"], "records_s", "%.0f"),
        ("100-record batches: p50 latency ms", r["batch"], r["hello_batch"], "p50", "%.1f"),
        ("100-record batches: p99 latency ms", r["batch"], r["hello_batch"], "p99", "%.1f"),
        ("end to end, %d single records: records/s" % plan["e2e_single"], r["e2e_single"], r["copy"],
         "records_s", "%.0f"),
        ("end to end, %d in batches: records/s" % plan["e2e_batch"], r["e2e_batch"], r["copy"],
         "records_s", "%.0f"),
        ("burst of %d: records/s until all stored" % plan["burst"], [r["burst"]], r["copy"], "records_s", "%.0f"),
    ]
    width = max(len(row[0]) for row in rows)
    print("%-*s  %-22s  %-26s  %s" % (width, "measurement", "LogFlow", "ceiling", "LogFlow/ceiling"))
    for name, ours, ceiling, field, fmt in rows:
        label = spread(ceiling, field, fmt) + {id(r["copy"]): " COPY", id(r["queued_single"]): " queued"}.get(
            id(ceiling), " hello")
        print("%-*s  %-22s  %-26s  %.3g" % (width, name, spread(ours, field, fmt), label,
                                            median(ours, field) / median(ceiling, field)))
    print("(hello: a hello-world Flask app under the same gunicorn and wrk script; queued: hello plus one Redis"
          " LPUSH of the body, the least a durable 202 costs; COPY: %d rows into a table shaped like logs,"
          " %.0f rows/s. Latency ratios above 1: LogFlow is slower.)" % (plan["copy_rows"], copy))
    paced_run = r.get("paced")
    if paced_run:
        print("single POST at about half its maximum rate: %.0f requests/s reached, p50 %.1f ms, p99 %.1f ms"
              % (paced_run["req_s"], paced_run["p50"], paced_run["p99"]))
    errors = sum(run["non2xx"] + run["socket_errors"] for key in ("single", "batch") for run in r[key])
    print("non-2xx answers or socket errors in the throughput runs: %d" % errors)
    for key in ("e2e_single", "e2e_batch"):
        runs = r[key]
        print("%s: sending %s s (%s records/s accepted); stored %s s after the first request; refused and"
              " resent %d, dropped unanswered and resent %d; lost %d"
              % (key, spread(runs, "sending_s", "%.1f"), spread(runs, "accepted_s", "%.0f"),
                 spread(runs, "seconds", "%.1f"), sum(run["refused"] for run in runs),
                 sum(run["dropped"] for run in runs), sum(run["lost_db"] + run["lost_files"] for run in runs)))


def report_burst(b):
    print()
    print("burst: %d records in 100-record requests, sent in %.1f s (%.0f records/s accepted; %d requests refused"
          " and resent, %d dropped unanswered and resent)" % (b["records"], b["sending_s"], b["accepted_s"],
                                                              b["refused"], b["dropped"]))
    print("       all stored %.1f s after the first request: the spool drained %.1f s after sending ended;"
          " at most %d records waited in a writer's queue" % (b["seconds"], b["seconds"] - b["sending_s"], b["queued"]))
    print("       answered 202: %d records; in logs %d, in files %d: LOST %d (db), %d (files)"
          % (b["records"], b["rows"], b["lines"], b["lost_db"], b["lost_files"]))
    print()
    print("%-32s %s" % ("peak RSS during the burst", "MiB"))
    for label in sorted(b["peak"], key=lambda label: (GROUPS.index(group_of(label)), label)):
        name = label if label != "postgres backend" else "postgres backend, largest (%d at most)" % b["backends"]
        print("%-32s %5.0f" % (name, b["peak"][label]))
    print("%-32s %5.0f  (counts shared memory once per process)" % ("sum, at its peak", b["total_rss"]))


def report_cpu(r, plan):
    b = r["burst"]
    print()
    columns = [("single", r["single"]), ("hello 1", r["hello_single"]), ("hello+LPUSH 1", r["queued_single"]),
               ("batch", r["batch"]),
               ("hello 100", r["hello_batch"]), ("e2e 1", r["e2e_single"]), ("e2e 100", r["e2e_batch"]),
               ("burst", [b])]
    print("CPU seconds per phase (% of one core)   " + "".join("%-18s" % name for name, _ in columns))
    for group in GROUPS + ("bench + wrk", "other processes"):
        cells = []
        for _, runs in columns:
            if group == "bench + wrk":
                used = statistics.median(run["cpu"]["bench"] for run in runs)
            elif group == "other processes":
                used = statistics.median(run["cpu"]["other"] for run in runs)
            else:
                used = cpu_median(runs, group)
            wall = statistics.median(run["cpu"]["wall"] for run in runs)
            cells.append("%-18s" % ("%.1f (%.0f%%)" % (used, 100 * used / wall)))
        print("%-38s %s" % (group, "".join(cells)))
    # Keep-alive connections stay with the worker that accepted them; see docs/benchmarks.md.
    print("%-38s %s" % ("busiest web worker's share, % per run", "".join(
        "%-18s" % ",".join(busiest_worker(run) for run in runs) for _, runs in columns)))
    per_request = lambda runs, group: 1000 * cpu_median(runs, group) / median(runs, "requests")
    print("web CPU per request: single %.2f ms (hello %.2f ms, hello + LPUSH %.2f ms plus Redis %.2f ms),"
          " 100-record batch %.2f ms (hello %.2f ms)"
          % (per_request(r["single"], "logflow web"), per_request(r["hello_single"], "hello web"),
             per_request(r["queued_single"], "hello web"), per_request(r["queued_single"], "redis"),
             per_request(r["batch"], "logflow web"), per_request(r["hello_batch"], "hello web")))
    store = sum(b["cpu"]["groups"][g] for g in ("consumers", "redis", "postgres"))
    print("CPU per 1000 records in the burst: web %.0f ms, consumers %.0f ms, redis %.0f ms, postgres %.0f ms"
          % tuple(1e6 * b["cpu"]["groups"][g] / b["records"] for g in ("logflow web", "consumers", "redis", "postgres")))
    print("                                   (storing: %.0f ms; raw COPY: %.0f ms of wall time and %.0f ms of"
          " postgres CPU per 1000 rows)" % (1e6 * store / b["records"], 1e6 * median(r["copy"], "seconds") / plan["copy_rows"],
                                            1e6 * cpu_median(r["copy"], "postgres") / plan["copy_rows"]))


def report_profiles(profiles):
    for label, profile in sorted(profiles.items()):
        if profile["samples"] < 50:
            continue  # an idle worker (connections stay with the worker that accepted them)
        print()
        print("py-spy, %s view (%d samples), own time: %s" % (label, profile["samples"], "; ".join(
            "%.0f%% %s" % (100 * share, name) for share, name in profile["own"])))
        print("    LogFlow functions, total time: %s" % "; ".join(
            "%.0f%% %s" % (100 * share, name) for share, name in profile["logflow_total"]))


def busiest_worker(run):
    """The busiest gunicorn worker's share of its app's web CPU in a run, in %: 100 when one worker served all."""
    workers = run["cpu"]["workers"]
    app = max(("logflow", "hello"), key=lambda app: sum(v for k, v in workers.items() if k.startswith(app)))
    shares = [v for k, v in workers.items() if k.startswith(app)]
    return "%.0f" % (100 * max(shares) / max(sum(shares), 1e-9))


PHASES = ("single", "hello_single", "queued_single", "batch", "hello_batch", "e2e_single", "e2e_batch", "burst")


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shorter run of each")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the Procfile's web line's)")
    parser.add_argument("--threads", type=int, help="gunicorn threads per worker (default: the Procfile's web line's)")
    parser.add_argument("--consumers", type=int, default=1, help="huey_consumer processes, 4 threads each")
    parser.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                        help="one more gunicorn argument for LogFlow and hello alike (repeatable),"
                             " e.g. --gunicorn-arg=--worker-connections=8")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--balance", action="store_true",
                        help="--worker-connections CONNECTIONS/WORKERS, so that plain gthread workers share wrk's"
                             " connections (server.BufferingWorker then closes some unanswered)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1 leaves the server more CPU)")
    parser.add_argument("--aof", action="store_true", help="Redis with AOF (appendfsync everysec), as in production")
    parser.add_argument("--burst", type=int, help="records in the burst (default 1,000,000; --quick 200,000)")
    parser.add_argument("--profile", type=int, metavar="SECONDS",
                        help="py-spy the LogFlow gunicorn workers and consumers for SECONDS during the burst")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (process logs, files)")
    args = parser.parse_args()
    plan = dict(PLANS["quick" if args.quick else "full"])
    plan["burst"] = args.burst or plan["burst"]
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    if args.profile and not shutil.which("py-spy"):
        sys.exit("py-spy not found: pip install py-spy")
    # SIGTERM unwinds like Ctrl-C, so the finally clauses stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    began = time.monotonic()
    info = machine()
    info.update(command=shlex.join(["python3", *sys.argv]), load_start=os.getloadavg()[0],
                busy_start=other_load())
    workdir = tempfile.mkdtemp(prefix="logflow-bench-")
    results = {key: [] for key in ("single", "hello_single", "queued_single", "batch", "hello_batch",
                                   "e2e_single", "e2e_batch", "copy")}
    with removed_unless_kept(workdir, args):
        with Stack(args, workdir) as stack:
            log("starting Redis, PostgreSQL, 2 gunicorns, %d consumer(s) in %s" % (args.consumers, workdir))
            stack.start()
            info["web"] = web.describe(stack.web)
            _, key = stack.add_project("throughput")
            for repeat in range(plan["repeats"]):
                # LogFlow and its ceiling back to back, so drifting load hits both alike.
                log("throughput run %d/%d" % (repeat + 1, plan["repeats"]))
                for name, base, body, per in (("single", stack.logflow_url, stack.single_body, 1),
                                              ("hello_single", stack.hello_url, stack.single_body, 1),
                                              ("queued_single", stack.hello_url + "/queued",
                                               stack.single_body, 1),
                                              ("batch", stack.logflow_url, stack.batch_body, 100),
                                              ("hello_batch", stack.hello_url, stack.batch_body, 100)):
                    results[name].append(throughput(stack, base, body, key, plan["seconds"], per))
            half = median(results["single"], "req_s") / 2
            log("single POSTs paced at %.0f requests/s" % half)
            results["paced"] = paced(stack, stack.logflow_url, stack.single_body, key, plan["seconds"], half)
            for repeat in range(plan["repeats"]):
                log("end-to-end run %d/%d" % (repeat + 1, plan["repeats"]))
                results["e2e_single"].append(end_to_end(
                    stack, "e2e-single-%d" % repeat, stack.single_body, 1, plan["e2e_single"]))
                results["e2e_batch"].append(end_to_end(
                    stack, "e2e-batch-%d" % repeat, stack.batch_body, 100, plan["e2e_batch"]))
                results["copy"].append(copy_ceiling(stack, plan["copy_rows"]))
            log("burst of %d records" % plan["burst"])
            sampler, spies = Sampler(stack), []
            if args.profile:  # start once the burst is under way
                timer = threading.Timer(2, lambda: spies.extend(start_profiles(stack, args.profile, workdir)))
                timer.start()
            results["burst"] = end_to_end(stack, "burst", stack.batch_body, 100, plan["burst"], sampler)
            results["burst"].update(peak=sampler.peak, backends=sampler.backends, total_rss=sampler.total,
                                    queued=sampler.queued)
            if args.profile:
                timer.join()
                for spy in spies:
                    spy.wait()
                results["profile"] = {name[:-4].replace("_", " ").replace(".", ", "): read_profile(
                    os.path.join(workdir, name))
                                      for name in os.listdir(workdir) if name.endswith(".spy")}
    info["load_end"] = os.getloadavg()[0]
    report(info, results, args, plan)
    print("\ntook %.0f s" % (time.monotonic() - began))
    if args.json:
        with open(args.json, "w") as output:
            json.dump({"info": info, "plan": plan, "args": vars(args), "results": results}, output, indent=1)


if __name__ == "__main__":
    main()
