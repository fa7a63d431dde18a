"""The benchmark's report: facts about the machine, medians and spreads of runs, and the tables bench/run.py prints."""
import datetime
import importlib.metadata
import os
import statistics
import subprocess
import sys

from servers import GROUPS, ROOT, group_of  # first: it puts tests/ on sys.path
import services  # tests/services.py: where the PostgreSQL binaries are


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
    if "disk" in b:  # runs saved before the disk figures lack them
        print("bytes per record in the burst: PostgreSQL WAL %.0f, logs table and indexes %.0f, daily files %.0f;"
              " Redis's peak RSS over the most records in one writer's queue: %.0f" % (
                  b["disk"]["wal"] / b["records"], b["disk"]["table"] / b["records"], b["disk"]["files"] / b["records"],
                  b["peak"].get("redis-server", 0) * 2**20 / max(b.get("queued", 0), 1)))


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
