"""What bounding pages in bytes costs a normal read: GET /logs of small logs, one query against two.

python3 bench/page_cost.py [REQUESTS]  — on a throwaway PostgreSQL (and Redis),
stores 20,000 log-shaped rows in one project, then sends GET /logs through
Flask's test client REQUESTS times per round (default 300), 5 rounds
alternating between the page as it was (whole rows in one query) and as it is
(keys and sizes, then the rows that fit), and prints wall milliseconds per
request, minimum and median of the rounds, for limit 100 (the default) and 1000.
"""
import datetime
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH, os.path.join(ROOT, "tests")]

import services  # noqa: E402  (tests/services.py: throwaway PostgreSQL and Redis)

ROUNDS = 5
ROWS = 20000


def one_query_page(project_id, log_filter, max_bytes=None):
    """GET /logs' page before it was bounded in bytes: its whole rows in one query (max_bytes unused)."""
    import query
    rows = list(query.select_logs(project_id, log_filter))
    more, rows = len(rows) > log_filter.limit, rows[:log_filter.limit]
    cursor = query.encode_cursor((rows[-1].timestamp, rows[-1].id), log_filter.order) if more else None
    return [query.render(row) for row in rows], cursor


def main():
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    workdir = tempfile.mkdtemp(prefix="logflow-page-cost-")
    postgres = services.start_postgres(os.path.join(workdir, "pg"))
    redis_server = services.start_redis(os.path.join(workdir, "redis"))
    try:
        measure(postgres, redis_server, requests)
    finally:
        redis_server.stop()
        services.shutdown_all()


def measure(postgres, redis_server, requests):
    """Store the rows, then time both pages, alternating, and print them side by side."""
    import config
    import logflow
    import models
    import query
    import storage
    from servers import log_record
    # As the environment of a production web process gives them (a secret for the viewer's cookies too).
    settings = config.load({"DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url,
                            "LOGFLOW_DATA_DIR": os.path.join(os.path.dirname(postgres.directory), "data"),
                            "LOGFLOW_SECRET_KEY": secrets.token_urlsafe(32)})
    app = logflow.create_app(settings)
    with models.database.connection_context():
        models.create_tables()
        project = models.Project.create(name="page-cost")
        read_key = models.ApiKey.issue(project, scope="read")
    start = datetime.datetime(2026, 11, 27)
    storage.DatabaseWriter().write([
        (project.id, "2026-11-27T00:00:00.000000Z",
         dict(log_record(n), id=str(uuid.uuid4()), level="INFO",
              timestamp=(start + datetime.timedelta(seconds=n)).isoformat(timespec="microseconds") + "Z"))
        for n in range(ROWS)])
    with models.database.connection_context():
        models.database.execute_sql("ANALYZE")
    client = app.test_client()
    pages = {"one query (before)": one_query_page, "keys, then rows (after)": query.page}
    for limit in (100, 1000):
        times = {name: [] for name in pages}
        for _ in range(ROUNDS):
            for name, page in pages.items():
                # logflow.list_logs calls query.page: the page under test stands in for it.
                query.page = page
                get(client, read_key, limit, 20)  # warm up
                started = time.perf_counter()
                get(client, read_key, limit, requests)
                times[name].append((time.perf_counter() - started) / requests * 1e3)
        query.page = pages["keys, then rows (after)"]
        print("GET /logs?limit=%d over %d small rows, ms per request, min / median of %d rounds of %d:"
              % (limit, ROWS, ROUNDS, requests))
        for name, values in times.items():
            print("  %-24s %6.2f / %6.2f" % (name, min(values), statistics.median(values)))


def get(client, read_key, limit, times):
    """GET /logs?limit= times; fails unless every answer is a full page with a cursor."""
    for _ in range(times):
        response = client.get("/logs", query_string={"limit": limit}, headers={"X-API-Key": read_key})
        if response.status_code != 200 or len(response.json["logs"]) != limit or not response.json["next_cursor"]:
            raise SystemExit("GET /logs answered %s: %s" % (response.status_code, response.get_data(True)[:200]))


if __name__ == "__main__":
    main()
