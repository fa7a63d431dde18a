"""Random (version 4) against time-ordered (version 7) record ids, as the logs table grows.

python3 bench/ids.py [ROWS]  — fills two `logs` tables in one throwaway PostgreSQL
with ROWS rows each (default 3,000,000; random ids, as a table from before LogFlow
made time-ordered ones), then stores 7,000-record batches through
storage.DatabaseWriter, made by records.normalize(), alternating: random ids in one
database, LogFlow's own in the other. Prints rows/s per write and the medians'
ratio. Takes about 3 minutes with the default.
"""
import datetime
import io
import os
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import psycopg2  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
import records  # noqa: E402
import services  # noqa: E402  (tests/services.py: a throwaway PostgreSQL)
import storage  # noqa: E402

BATCH, ROUNDS = 7000, 6
SETTINGS = config.load({})  # LogFlow's defaults, for normalize()


def batch(ids):
    """One consumer batch of the benchmark's records, each with an id from ids()."""
    now = models.utcnow()
    received_at = records.format_time(now)
    items = []
    for number in range(BATCH):
        record, _ = records.normalize({"message": "GET /api/users/%d 200 12ms" % number, "level": "info",
                                       "metadata": {"user_id": number, "status": 200}}, now, SETTINGS)
        items.append((1, received_at, dict(record, id=ids())))
    return items


def fill(url, rows):
    """ROWS rows with random ids in project 1 of a fresh `logs` table."""
    settings = config.load({"DATABASE_URL": url})
    models.bind_database(settings)
    models.create_tables()
    with models.database.connection_context():
        models.Project.create(name="bench")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for start in range(0, rows, 500_000):
            data = "".join("%s\t1\tINFO\tm %d\t{}\t2026-11-28 00:00:00\t2026-11-28 00:00:00\n" % (uuid.uuid4(), n)
                           for n in range(start, min(rows, start + 500_000)))
            cur.copy_expert("COPY logs (id, project_id, level, message, metadata, timestamp, received_at)"
                            " FROM STDIN", io.StringIO(data))
            conn.commit()
    conn = psycopg2.connect(url)
    conn.autocommit = True  # VACUUM runs outside a transaction
    conn.cursor().execute("VACUUM ANALYZE logs")
    conn.close()


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    server = services.start_postgres(os.path.join(tempfile.mkdtemp(prefix="logflow-ids-"), "pg"))
    urls = {}
    for name in ("random", "time_ordered"):
        server.create_database(name)
        urls[name] = server.url.rsplit("/", 1)[0] + "/" + name
        fill(urls[name], rows)
    print("two logs tables of %d rows; storing %d-record batches, %d rounds" % (rows, BATCH, ROUNDS), flush=True)
    rates = {"random": [], "time_ordered": []}
    for _ in range(ROUNDS):
        for name, ids in (("random", lambda: str(uuid.uuid4())), ("time_ordered", records.random_uuid)):
            models.bind_database(config.load({"DATABASE_URL": urls[name]}))
            items = batch(ids)
            started = time.monotonic()
            storage.DatabaseWriter().write(items)
            rates[name].append(BATCH / (time.monotonic() - started))
    for name, values in rates.items():
        print("%-13s rows/s: median %.0f (%s)" % (name, statistics.median(values),
                                                  ", ".join("%.0f" % value for value in values)))
    print("time-ordered / random: %.2f" % (statistics.median(rates["time_ordered"])
                                           / statistics.median(rates["random"])))


if __name__ == "__main__":
    main()
