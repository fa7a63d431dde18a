"""What keeping models.LogCount costs the database writer, side by side.

python3 bench/rollup_write.py [ROUNDS]  — in one throwaway PostgreSQL and one
SQLite file, stores 1,000-record batches (timestamps over the current two
minutes, five levels, as a busy project sends them) alternately through the
write without counts (the code storage.DatabaseWriter.write ran before the
counts, copied below) and through storage.DatabaseWriter.write, new and
redelivered; then two processes at once on PostgreSQL, each mode in turn, to
show the wait on count rows that consumers share. Prints medians of rows/s, CPU
per 1,000-record batch (the writer's process and PostgreSQL's) and the ratios.
Takes about 2 minutes with the default 15 rounds.
"""
import datetime
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import orjson  # noqa: E402

import config  # noqa: E402
import models  # noqa: E402
import records  # noqa: E402
import services  # noqa: E402  (tests/services.py: a throwaway PostgreSQL)
import storage  # noqa: E402

BATCH = 1000
SETTINGS = config.load({})  # LogFlow's defaults, for normalize()


def batch(project_id=1):
    """One consumer batch of fresh records timestamped over the last two minutes."""
    now = models.utcnow()
    received_at = records.format_time(now)
    items = []
    for number in range(BATCH):
        moment = now - datetime.timedelta(milliseconds=120 * number)
        record, _ = records.normalize({"message": "GET /api/users/%d 200 12ms" % number,
                                       "level": records.LEVELS[number % 5], "timestamp": moment.isoformat() + "Z",
                                       "metadata": {"user_id": number, "status": 200}}, now, SETTINGS)
        items.append((project_id, received_at, record))
    return items


def write_without_counts(items):
    """storage.DatabaseWriter.write as it was before the counts (commit 5471eb4)."""
    with models.database.connection_context(), models.durable_transaction():
        cursor = models.database.cursor()
        if not models.on_postgres():
            cursor.executemany(
                "INSERT OR IGNORE INTO logs (%s) VALUES (?, ?, ?, ?, ?, ?, ?)" % storage.COLUMNS,
                [(record["id"].replace("-", ""), project, record["level"], record["message"],
                  orjson.dumps(record["metadata"]).decode(), storage.sqlite_time(record["timestamp"]),
                  storage.sqlite_time(received_at)) for project, received_at, record in items])
            return
        buffer = io.StringIO("".join(storage.copy_line(*item) for item in items))
        cursor.execute("SAVEPOINT direct_copy")
        try:
            cursor.copy_expert("COPY logs (%s) FROM STDIN" % storage.COLUMNS, buffer)
            cursor.execute("RELEASE SAVEPOINT direct_copy")
            return
        except storage.psycopg2.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT direct_copy")
        buffer.seek(0)
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS logs_incoming (LIKE logs) ON COMMIT DELETE ROWS")
        cursor.copy_expert("COPY logs_incoming (%s) FROM STDIN" % storage.COLUMNS, buffer)
        cursor.execute("INSERT INTO logs (%s) SELECT %s FROM logs_incoming ON CONFLICT DO NOTHING"
                       % (storage.COLUMNS, storage.COLUMNS))


MODES = {"without counts": write_without_counts, "with counts": storage.DatabaseWriter().write}


def server_seconds(server):
    """CPU seconds used so far by a PostgreSQL server's processes (its backends and helpers); 0 without one."""
    if server is None:
        return 0.0
    with open(os.path.join(server.datadir, "postmaster.pid")) as handle:
        postmaster = handle.readline().strip()
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # a process that ended meanwhile
            continue
        if pid == postmaster or fields[1] == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def timed(write, items, server):
    """Wall seconds of one write, and CPU seconds of this process and the database server together."""
    cpu, served, started = time.process_time(), server_seconds(server), time.perf_counter()
    write(items)
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu + server_seconds(server) - served


def side_by_side(name, rounds, server=None):
    """Alternate the two writes, new batches then the same batches again; print medians and ratios.

    Wall time on a shared machine is mostly other people's load; CPU time (this
    process, plus PostgreSQL's processes, in ticks of 10 ms summed over every
    round) is what the write itself costs.
    """
    walls = {(mode, kind): [] for mode in MODES for kind in ("new", "redelivered")}
    cpus = {key: 0.0 for key in walls}
    for _ in range(rounds):
        for mode, write in MODES.items():
            items = batch()
            for kind in ("new", "redelivered"):
                wall, cpu = timed(write, items, server)
                walls[(mode, kind)].append(wall)
                cpus[(mode, kind)] += cpu
    for kind in ("new", "redelivered"):
        rates = {mode: BATCH / statistics.median(walls[(mode, kind)]) for mode in MODES}
        cpu = {mode: 1000 * cpus[(mode, kind)] / rounds for mode in MODES}
        print("%-10s %-11s without counts %8.0f rows/s, %5.1f ms CPU; with counts %8.0f rows/s, %5.1f ms CPU:"
              " %.2fx the time, %.2fx the CPU"
              % (name, kind, rates["without counts"], cpu["without counts"], rates["with counts"],
                 cpu["with counts"], rates["without counts"] / rates["with counts"],
                 cpu["with counts"] / cpu["without counts"]), flush=True)


def consumer(url, mode, batches, start, results):
    models.bind_database(config.load({"DATABASE_URL": url}))
    made = [batch() for _ in range(batches)]
    start.wait()
    began = time.perf_counter()
    for items in made:
        MODES[mode](items)
    results.put(time.perf_counter() - began)


def concurrent(url, rounds, processes=2, batches=20):
    """`processes` consumers writing the same minutes at once, each mode in turn; total rows/s."""
    context = multiprocessing.get_context("spawn")
    rates = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            start, results = context.Barrier(processes), context.Queue()
            workers = [context.Process(target=consumer, args=(url, mode, batches, start, results))
                       for _ in range(processes)]
            for worker in workers:
                worker.start()
            elapsed = max(results.get(timeout=300) for _ in workers)
            for worker in workers:
                worker.join()
            rates[mode].append(processes * batches * BATCH / elapsed)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    print("postgres   %d at once   without counts %8.0f rows/s, with counts %8.0f rows/s: %.2fx the time"
          % (processes, medians["without counts"], medians["with counts"],
             medians["without counts"] / medians["with counts"]), flush=True)


def prepare(settings):
    models.bind_database(settings)
    models.create_tables()
    with models.database.connection_context():
        models.Project.create(name="bench")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    print("load before: %s" % open("/proc/loadavg").read().strip(), flush=True)
    with tempfile.TemporaryDirectory(prefix="logflow-rollup-") as folder:
        server = services.start_postgres(os.path.join(folder, "pg"))
        prepare(config.load({"DATABASE_URL": server.url}))
        side_by_side("postgres", rounds, server)
        concurrent(server.url, max(3, rounds // 5))
        prepare(config.load({"LOGFLOW_DATA_DIR": os.path.join(folder, "data")}))
        side_by_side("sqlite", rounds)
        services.shutdown_all()
    print("load after: %s" % open("/proc/loadavg").read().strip(), flush=True)


if __name__ == "__main__":
    main()
