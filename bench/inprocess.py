"""CPU per request in one process: hello, hello + LPUSH, and LogFlow, single records and batches.

python3 bench/inprocess.py [REQUESTS]  — calls each WSGI app directly (no gunicorn,
no sockets but Redis's) REQUESTS times per round (default 3,000), 5 rounds
alternating, and prints the CPU per request: minimum and median. Far steadier
than wrk on a shared machine, so it is where small changes to the hot path are
judged; under gunicorn each microsecond here costs about two of web CPU. LogFlow
runs with a throwaway Redis (the spool) and SQLite (keys); no consumer runs.
"""
import io
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH, os.path.join(ROOT, "tests")]

import orjson  # noqa: E402

import services  # noqa: E402  (tests/services.py: a throwaway Redis)

ROUNDS = 5


def main():
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    workdir = tempfile.mkdtemp(prefix="logflow-inprocess-")
    redis_server = services.start_redis(os.path.join(workdir, "redis"))
    # Before LogFlow's modules bind their settings at import.
    os.environ.update(REDIS_URL=redis_server.url, LOGFLOW_DATA_DIR=os.path.join(workdir, "data"),
                      LOGFLOW_LOG_DIR=os.path.join(workdir, "logs"))
    for name in [name for name in os.environ if name.startswith("LOGFLOW_") and name not in (
            "LOGFLOW_DATA_DIR", "LOGFLOW_LOG_DIR")]:
        del os.environ[name]
    os.environ.pop("DATABASE_URL", None)
    import hello
    import logflow
    import models
    from servers import log_record
    app = logflow.create_app()
    with models.database.connection_context():
        key = models.ApiKey.issue(models.Project.create(name="inprocess"))
    bodies = {"single": orjson.dumps(log_record(0)), "batch": orjson.dumps([log_record(n) for n in range(100)])}
    apps = {"hello": (hello.app, "/logs"), "hello + LPUSH": (hello.app, "/queued/logs"), "LogFlow": (app, "/logs")}
    for shape, body in bodies.items():
        times = {name: [] for name in apps}
        for _ in range(ROUNDS):
            for name, (wsgi_app, path) in apps.items():
                call(wsgi_app, path, body, key, 100)  # warm up
                started = time.process_time()
                call(wsgi_app, path, body, key, requests)
                times[name].append((time.process_time() - started) / requests * 1e6)
            # No consumer drains LogFlow's spool: empty it (and hello's list) before LOGFLOW_MAX_QUEUE refuses.
            hello.queue.flushdb()
        print("%s (%d bytes), CPU µs per request, min / median of %d rounds of %d:" % (
            shape, len(body), ROUNDS, requests))
        for name, values in times.items():
            print("  %-13s %7.1f / %7.1f" % (name, min(values), statistics.median(values)))


def call(wsgi_app, path, body, key, times):
    """POST body to path of a WSGI app `times` times; fails unless every answer is 202."""
    statuses = []
    for _ in range(times):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "bench", "SERVER_PORT": "80",
                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
                   "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
                   "wsgi.run_once": False, "CONTENT_LENGTH": str(len(body)),
                   "CONTENT_TYPE": "application/json", "HTTP_X_API_KEY": key}
        answer = wsgi_app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(answer)
        getattr(answer, "close", lambda: None)()
    if any(not status.startswith("202") for status in statuses):
        raise SystemExit("%s answered %s" % (path, sorted(set(statuses))))


if __name__ == "__main__":
    main()
