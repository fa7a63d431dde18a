#!/usr/bin/env python3
"""The alerts' benchmark: 100 rules evaluated over a project of 10,000,000 logs, and ingestion beside them.

    python3 bench/alerts.py            # 10,000,000 rows: about 6 minutes once loaded (the load: about 3.5 more)
    python3 bench/alerts.py --quick    # 100,000 rows, fewer and shorter runs: about 40 s (the first: 15 s more)

Starts Redis and a PostgreSQL whose data folder is kept under
/tmp/logflow-bench-alerts/<rows> between runs: bench/viewer.py's data and
loader (one project of --rows logs over 7 days, three smaller ones beside
it), in a folder of its own because the rules made here would be evaluated
by bench/viewer.py's consumer. Each run tops the main project up, at the
load's mean rate, from the load's end to an hour past now: every window
then holds the logs it would in production. Then prints, measured in this
one run:

1. the time of one alerts.evaluate_due pass over --rules rules of four kinds
   (threshold on a level, on q=<word>, on meta.<path>=value; absence of a
   message), windows of 5, 15 and 60 minutes and one in ten of a day:
   median of --passes passes, every rule made due again before each; and
   what each kind and window costs of it;
2. single-record POSTs (wrk) at full speed, then at half the rate reached,
   into another project, without and with the rules, in alternating order:
   "with" has the real consumer run its evaluate_alerts task every --every
   seconds (production runs it once a minute), with the ratios;
3. one pass after a burst of --burst records into that other project, once
   PostgreSQL's statistics have seen it (ANALYZE, as autovacuum does).

docs/benchmarks.md ("Alerts") explains the figures.
"""
import argparse
import contextlib
import datetime
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

import psycopg2

import servers  # bench/servers.py, first: it puts the repository's root and tests/ on sys.path
import meters  # bench/meters.py: the CPU meter
import reporting  # bench/reporting.py: the machine's facts, medians and spreads
import traffic  # bench/traffic.py: wrk
import web  # bench/web.py: the Procfile's web line
from bench import viewer as viewer_bench  # bench/viewer.py: the data and its cache (the root's viewer.py is the pages)

import alerts
import config
import models
import receivers  # tests/receivers.py: a real HTTP server receiving the webhooks
import tasks

CACHE = "/tmp/logflow-bench-alerts"
# A rule's window, by its number within its kind: one rule in ten looks at the last day.
WINDOWS = (5, 15, 60, 5, 15, 60, 5, 15, 60, 1440)
# Each kind's share of the rules and its saved searches, with about the share of the logs each
# matches (the data's makeup, bench/viewer.py); None: an absence rule.
KINDS = {
    "level": (0.30, [("level=ERROR", 0.018), ("min_level=ERROR", 0.02), ("level=CRITICAL", 0.002),
                     ("level=WARN", 0.06)]),
    "text": (0.25, [("q=timeout", 0.027), ("q=card_declined", 0.0067), ("q=Traceback", 0.008),
                    ("q=OperationalError", 0.0016), ("q=rate+limit", 0.02), ("q=slow+request", 0.02)]),
    "meta": (0.25, [("meta.service=checkout", 1 / 7), ("meta.http.status=404", 2 / 55),
                    ("meta.error.type=KeyError", 0.004), ("meta.host=web-3", 1 / 8),
                    ("meta.http.path=/api/payments", 1 / 7), ("meta.user=user4242", 0.7 / 50000)]),
    "absence": (0.20, [("q=" + viewer_bench.RARE_WORD, None), ("meta.service=billing", None),
                       ("q=card_declined", None)]),
}
# A threshold is its window's expected count times one of these: some rules fire, most do not.
FACTORS = (0.5, 1.5, 3)
# Where rules wait while nothing should evaluate them: the consumer's own minute ticks find none due.
PARKED = datetime.datetime(2100, 1, 1)
# "Well within the minute": a pass takes at most this share of it.
WELL_WITHIN = 0.25
PLANS = {
    "full": dict(rows=10_000_000, passes=5, rounds=3, seconds=10, every=10, burst=1_000_000),
    "quick": dict(rows=100_000, passes=3, rounds=1, seconds=5, every=5, burst=20_000),
}


# ---------------------------------------------------------------- the data and the rules

def top_up(stack, marker, project_id, rows):
    """Add the project's logs from the load's end to an hour past now at the load's mean rate; returns (rows, until).

    bench/viewer.py's reset() deleted the previous run's (every row after the
    load's end); the rollup's counts follow the rows, as the writer keeps them.
    """
    hours = math.ceil((time.time() + 3600 - marker["end"]) / 3600)
    per_hour = rows // (viewer_bench.DAYS * 24)
    added = 0
    for hour in range(hours):
        start = (marker["end"] + hour * 3600) * 1000000
        added += viewer_bench.copy_hour((stack.db_url, viewer_bench.DAYS * 24 + hour, start,
                                         [(project_id, per_hour, 0)]))
    end = datetime.datetime.fromtimestamp(marker["end"], datetime.timezone.utc).replace(tzinfo=None)
    with models.database.connection_context():
        models.database.execute_sql(
            "INSERT INTO log_counts (project_id, minute, level, number) SELECT project_id, %s, level, count(*)"
            " FROM logs WHERE project_id = %%s AND timestamp >= %%s GROUP BY 1, 2, 3" % models.minute_of(),
            (project_id, end))
    return added, marker["end"] + hours * 3600


def allotment(count):
    """{kind: rules} summing to count, by the kinds' shares."""
    numbers = {kind: round(count * share) for kind, (share, _) in KINDS.items()}
    numbers["level"] += count - sum(numbers.values())
    return numbers


def make_rules(project, count, rows, settings, target):
    """count rules on new saved searches of the project, every kind and window; returns {rule id: facts}."""
    per_minute = rows / (viewer_bench.DAYS * 24 * 60)
    made = {}
    for kind, number_of_kind in allotment(count).items():
        searches = KINDS[kind][1]
        for number in range(number_of_kind):
            text, share = searches[number % len(searches)]
            window = WINDOWS[number % len(WINDOWS)]
            search = alerts.save_search(project, "bench-%s-%d" % (kind, number), text)
            if share is None:
                rule, _ = alerts.add_rule(search, "absence", window, "webhook", target, settings)
            else:
                threshold = max(1, round(per_minute * window * share * FACTORS[number % len(FACTORS)]))
                rule, _ = alerts.add_rule(search, "threshold", window, "webhook", target, settings,
                                          threshold=threshold)
            made[rule.id] = {"kind": kind, "window": window, "query": text}
    return made


def park_rules():
    """Make no rule due until the benchmark says so."""
    models.AlertRule.update(due_at=PARKED).execute()


# ---------------------------------------------------------------- 1. evaluation passes

@contextlib.contextmanager
def rule_times(spent):
    """Record each rule's seconds in alerts.evaluate (count, new state, evaluation row) while evaluate_due runs.

    evaluate_due looks evaluate up in its module on every call, so a timing
    wrapper put there sees each rule of the real pass.
    """
    evaluate = alerts.evaluate

    def timed(rule, *args, **kwargs):
        began = time.perf_counter()
        try:
            return evaluate(rule, *args, **kwargs)
        finally:
            spent[rule.id] = time.perf_counter() - began

    alerts.evaluate = timed
    try:
        yield
    finally:
        alerts.evaluate = evaluate


def evaluation_passes(settings, rules, count):
    """count alerts.evaluate_due passes in this process, every rule made due before each; what each took."""
    results = []
    for number in range(count):
        servers.log("evaluation pass %d/%d over %d rules" % (number + 1, count, len(rules)))
        with models.database.connection_context():
            began_at = models.utcnow()
            models.AlertRule.update(due_at=began_at).execute()
            notified = models.Notification.select().count()
            spent = {}
            began = time.perf_counter()
            with rule_times(spent):
                alerts.evaluate_due(settings, 0.0)
            seconds = time.perf_counter() - began
            counted = dict(models.AlertRule.select(models.AlertRule.id, models.AlertRule.last_count)
                           .where(models.AlertRule.evaluated_at >= began_at).tuples())
            if len(counted) != len(rules):
                raise RuntimeError("%d of %d rules were not evaluated (see the log above)"
                                   % (len(rules) - len(counted), len(rules)))
            results.append({"seconds": seconds, "rules": spent, "counts": counted,
                            "firing": models.AlertRule.select().where(models.AlertRule.state == "firing").count(),
                            "notified": models.Notification.select().count() - notified,
                            "load": os.getloadavg()[0]})
            park_rules()
    return results


# ---------------------------------------------------------------- 2. ingestion beside them

class Evaluations:
    """While started, every `every` s: one pass of the consumer's own evaluate_alerts task (once()).

    The rules stay parked between passes, so that the consumer's minute ticks
    add no pass of their own.
    """

    def __init__(self, rules, every):
        self.rules, self.every = rules, every
        self.stopping = threading.Event()

    def start(self):
        self.stopping.clear()
        self.durations, self.failed = [], None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def stop(self):
        """Wait for the pass under way; returns each pass's seconds."""
        self.stopping.set()
        self.thread.join()
        if self.failed:
            raise RuntimeError(self.failed)
        return self.durations

    def run(self):
        next_pass = time.monotonic()
        with models.database.connection_context():
            while not self.stopping.wait(max(0.0, next_pass - time.monotonic())):
                next_pass += self.every
                try:
                    self.durations.append(self.once())
                except RuntimeError as error:
                    self.failed = str(error)
                    return

    def once(self):
        """Make every rule due, enqueue evaluate_alerts, and poll until each rule has an evaluation made after; seconds."""
        asked_at = models.utcnow()
        models.AlertRule.update(due_at=asked_at).execute()
        tasks.evaluate_alerts()  # enqueued: a worker of the consumer runs it
        began = time.monotonic()
        while models.AlertRule.select().where(models.AlertRule.evaluated_at >= asked_at).count() < self.rules:
            if time.monotonic() > began + 900:
                raise RuntimeError("an evaluation pass did not finish within 900 s (see consumer-0.log)")
            time.sleep(0.1)  # polling with a deadline
        park_rules()
        return time.monotonic() - began


def ingestion(stack, args, key, evaluations):
    """Single POSTs at full speed, then at half the rate reached without: each without and with the evaluations."""
    full = compare(stack, args, key, evaluations, "full speed", "post.lua", [])
    rate = reporting.median(full["without"], "req_s") / 2
    paced = compare(stack, args, key, evaluations, "at %.0f/s" % rate, "paced.lua",
                    ["%.2f" % (1000.0 * args.connections / rate)])
    return {"full speed": full, "at %.0f requests/s" % rate: paced}


def compare(stack, args, key, evaluations, name, script, extra):
    """args.rounds rounds of one wrk load without and with the evaluations, the order alternating between rounds."""
    runs = {"without": [], "with": []}
    for number in range(args.rounds):
        for mode in ("without", "with") if number % 2 == 0 else ("with", "without"):
            servers.log("ingestion %s, round %d/%d, %s the evaluations" % (name, number + 1, args.rounds, mode))
            runs[mode].append(ingest(stack, args, key, script, extra, evaluations if mode == "with" else None))
    return runs


def analyzed(stack):
    """How many times autovacuum has analyzed logs: a new count means new statistics, perhaps new plans."""
    with psycopg2.connect(stack.db_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'logs'")
        return cursor.fetchone()[0]


def ingest(stack, args, key, script, extra, evaluations):
    """One wrk run of single POSTs and its drain: requests/s, p99, CPU, and the evaluations made meanwhile."""
    with models.database.connection_context():
        began_at, analyzed_before = models.utcnow(), analyzed(stack)
        meter = meters.Meter(stack)
        if evaluations:
            evaluations.start()
        result = traffic.wrk(stack.logflow_url + "/logs", script, [stack.single_body, key, *extra], args.seconds,
                             args.connections, 1, latency=True)
        stack.wait_drained()
        result["passes"] = evaluations.stop() if evaluations else []
        result["cpu"] = meter.stop()
        result.update(req_s=result["requests"] / result["seconds"], load=os.getloadavg()[0],
                      evaluations=models.AlertEvaluation.select().where(models.AlertEvaluation.at >= began_at).count(),
                      analyzed=analyzed(stack) - analyzed_before)
    return result


# ---------------------------------------------------------------- 3. after a burst

def after_burst(stack, args, key, evaluations):
    """Send args.burst records in 100-record batches, ANALYZE logs as autovacuum would after them, time one pass."""
    servers.log("a burst of %d records into 'ingest', then ANALYZE logs and one evaluation pass" % args.burst)
    traffic.send_exact(stack.logflow_url, stack.batch_body, key, args.burst // 100, args.connections, 1)
    stack.wait_drained()
    connection = psycopg2.connect(stack.db_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        began = time.monotonic()
        cursor.execute("ANALYZE logs")
        analyzed_s = time.monotonic() - began
    connection.close()
    with models.database.connection_context():
        began_at = models.utcnow()
        seconds = evaluations.once()
        # More than one per rule: a rule's next minute came while the pass ran, and a minute tick took it again.
        made = models.AlertEvaluation.select().where(models.AlertEvaluation.at >= began_at).count()
    return {"records": args.burst, "analyze_s": analyzed_s, "pass_s": seconds, "evaluations": made}


# ---------------------------------------------------------------- report

def report(info, marker, data, rules, passes, ingested, burst, args):
    viewer_bench.report_header("LogFlow alerts benchmark", info)
    print("data:      %d rows in project %r over %d days to %s (bench/viewer.py's), %s; topped up with %d rows"
          " to %s (%.0f rows an hour)" % (
              args.rows, viewer_bench.MAIN, viewer_bench.DAYS,
              time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(marker["end"])),
              "loaded now" if data["loaded_now"] else "cached in %s" % os.path.join(CACHE, str(args.rows)),
              data["topped_up"], data["topped_to"], args.rows / (viewer_bench.DAYS * 24)))
    print()
    report_passes(rules, passes)
    print()
    passes_s = report_ingestion(ingested, rules, args)
    if burst:
        print()
        report_burst(burst, passes_s, len(rules))


def median_ms(values):
    return 1000 * statistics.median(values) if values else 0.0


def report_passes(rules, passes):
    """One pass's time against the minute, then what each kind and window costs of it, and the slowest rules."""
    steady = passes[1:] or passes
    first, pass_s = passes[0], statistics.median(one["seconds"] for one in steady)
    numbers = allotment(len(rules))
    print("1. Evaluation: %d rules on project %r (%s), webhooks to a local receiver;"
          " windows of 5, 15, 60 minutes and 1 in 10 of 1440" % (
              len(rules), viewer_bench.MAIN, ", ".join("%d %s" % (numbers[kind], kind) for kind in KINDS)))
    print("   one alerts.evaluate_due pass, in this process, every rule due: median %.2f s (%.2f–%.2f) of %d passes"
          " after the first; the first %.2f s (%d notifications recorded, %d rules firing after it)" % (
              pass_s, min(one["seconds"] for one in steady), max(one["seconds"] for one in steady), len(steady),
              first["seconds"], first["notified"], first["firing"]))
    share = pass_s / 60
    verdict = ("well within the minute" if share <= WELL_WITHIN
               else "within the minute, not well within" if share < 1 else "MISSED: longer than the minute")
    print("   = %.1f %% of a minute: %s (well within: at most %.0f %%); load %.2f–%.2f during the passes" % (
        100 * share, verdict, 100 * WELL_WITHIN, min(one["load"] for one in passes),
        max(one["load"] for one in passes)))
    print()
    windows = sorted(set(WINDOWS))
    print("   %-8s %5s  %14s  %7s   %s" % ("kind", "rules", "ms per pass", "share", "median ms per rule (logs counted)"
                                           " by window: " + ", ".join("%d min" % w for w in windows)))
    for kind in list(KINDS) + ["all"]:
        ids = [rule for rule, facts in rules.items() if kind in ("all", facts["kind"])]
        per_pass = statistics.median(sum(one["rules"][rule] for rule in ids) for one in steady)
        cells = []
        for window in windows:
            chosen = [rule for rule in ids if rules[rule]["window"] == window]
            cells.append("%s (%s)" % ("%.1f" % median_ms([one["rules"][rule] for one in steady for rule in chosen]),
                                      "%.0f" % statistics.median(steady[-1]["counts"][rule] for rule in chosen))
                         if chosen else "-")
        print("   %-8s %5d  %14.0f  %6.0f%%   %s" % (kind, len(ids), 1000 * per_pass, 100 * per_pass / pass_s,
                                                   "; ".join(cells)))
    print("   (a rule's time is alerts.evaluate's: the count, the new state, its evaluation row, a notification's"
          " samples; the pass adds its select and claims: %.0f ms)" % (
              1000 * (pass_s - statistics.median(sum(one["rules"].values()) for one in steady))))
    slowest = sorted(rules, key=lambda rule: -statistics.median(one["rules"][rule] for one in steady))[:5]
    print("   slowest rules: " + "; ".join("%s over %d min %.0f ms (%d logs)" % (
        rules[rule]["query"], rules[rule]["window"], median_ms([one["rules"][rule] for one in steady]),
        steady[-1]["counts"][rule]) for rule in slowest))


def report_ingestion(ingested, rules, args):
    """Each load without and with the evaluations: median (min–max) and the ratio, CPU, and the evaluations made."""
    print("2. Ingestion: single POSTs into project 'ingest' (wrk -t1 -c%d, %d s a run, then until stored), %d round(s),"
          " without and with the evaluations in alternating order; median (min–max) [with/without]" % (
              args.connections, args.seconds, args.rounds))
    print("   %-38s %-24s %s" % ("", "without", "with"))
    for load, runs in ingested.items():
        for label, field, fmt in (("records/s", "req_s", "%.0f"), ("p99 ms", "p99", "%.1f")):
            ratio = reporting.median(runs["with"], field) / reporting.median(runs["without"], field)
            print("   %-38s %-24s %s [%.2f]" % ("%s: %s" % (load, label), reporting.spread(runs["without"], field, fmt),
                                                reporting.spread(runs["with"], field, fmt), ratio))
    groups = (("web", "logflow web"), ("consumer", "consumers"), ("postgres", "postgres"), ("redis", "redis"))
    for load, runs in ingested.items():
        print("   %-38s %s" % ("%s: CPU, %% of a core" % load, "   ".join(
            "%s: %s" % (mode, " ".join("%s %.0f" % (short, 100 * statistics.median(
                one["cpu"]["groups"][group] / one["cpu"]["wall"] for one in runs[mode])) for short, group in groups))
            for mode in ("without", "with"))))
    # Keep-alive connections stay with the worker that accepted them (docs/benchmarks.md): a run where one
    # worker did nearly all the web work measured one core, not the evaluations.
    for load, runs in ingested.items():
        print("   %-38s %s" % ("%s: busiest web worker's share, %%" % load, "   ".join(
            "%s: %s" % (mode, ",".join(reporting.busiest_worker(one) for one in runs[mode]))
            for mode in ("without", "with"))))
    every = [one for runs in ingested.values() for mode in ("without", "with") for one in runs[mode]]
    print("   other processes: %.0f %% of a core (median); load %.2f–%.2f; non-2xx or socket errors %d;"
          " autovacuum analyzed logs %d time(s) during the runs" % (
              100 * statistics.median(one["cpu"]["other"] / one["cpu"]["wall"] for one in every),
              min(one["load"] for one in every), max(one["load"] for one in every),
              sum(one["non2xx"] + one["socket_errors"] for one in every), sum(one["analyzed"] for one in every)))
    rates = {mode: 60 * sum(one["evaluations"] for runs in ingested.values() for one in runs[mode])
             / sum(one["cpu"]["wall"] for runs in ingested.values() for one in runs[mode]) for mode in ("without", "with")}
    passes = [seconds for runs in ingested.values() for one in runs["with"] for seconds in one["passes"]]
    print("   evaluations a minute: without %.0f, with %.0f (production: %d, each rule once a minute: the with runs"
          " evaluate %.1f times as often), the consumer's evaluate_alerts enqueued every %g s;" % (
              rates["without"], rates["with"], len(rules), rates["with"] / len(rules), args.every))
    print("   a pass took %.2f s (%.2f–%.2f) of %d, from the enqueue until every rule was evaluated" % (
        statistics.median(passes), min(passes), max(passes), len(passes)))
    return statistics.median(passes)


def report_burst(burst, passes_s, rules):
    print("3. After a burst of %d records in 100-record batches into 'ingest', and ANALYZE logs (%.1f s; autovacuum"
          " does the same once a tenth of the table changed):" % (burst["records"], burst["analyze_s"]))
    print("   one pass of the consumer's evaluate_alerts took %.2f s, %.1f times the passes of 2; %d evaluations of"
          " the %d rules were made meanwhile%s" % (
              burst["pass_s"], burst["pass_s"] / passes_s, burst["evaluations"], rules,
              " (the consumer's minute ticks evaluated rules again once their next minute came)"
              if burst["evaluations"] > rules else ""))


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100,000 rows, 3 passes, 1 round of 5 s runs, a pass every 5 s")
    parser.add_argument("--rows", type=int, help="logs in the main project (default 10,000,000; --quick 100,000)")
    parser.add_argument("--rules", type=int, default=100, help="alert rules (default 100)")
    parser.add_argument("--passes", type=int, help="evaluation passes (default 5; --quick 3)")
    parser.add_argument("--rounds", type=int, help="rounds of the ingestion comparison (default 3; --quick 1)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 10; --quick 5)")
    parser.add_argument("--every", type=float,
                        help="seconds between passes in the 'with' runs (default 10; --quick 5; production: 60)")
    parser.add_argument("--burst", type=int,
                        help="records sent before the last pass (default 1,000,000; --quick 20,000; 0: none)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--fresh", action="store_true", help="load the data again even if cached")
    parser.add_argument("--max-age", type=float, default=24,
                        help="hours after which cached data is loaded afresh (default 24)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (process logs)")
    args = parser.parse_args()
    for name, value in PLANS["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    info = reporting.machine()
    info.update(command=shlex.join(["python3", *sys.argv]), load_start=viewer_bench.load_text())
    workdir = tempfile.mkdtemp(prefix="logflow-bench-alerts-")
    stack_args = argparse.Namespace(workers=None, threads=None, consumers=1, gunicorn_arg=[], balance=False,
                                    connections=args.connections, wrk_threads=1, aof=False, viewer_pool=False)
    with servers.removed_unless_kept(workdir, args):
        with receivers.receiver() as receiver, viewer_bench.ViewerStack(stack_args, workdir) as stack:
            server, marker, marker_path = viewer_bench.open_cache(args, CACHE)
            stack.start_servers(server)
            # The webhooks go to the receiver on 127.0.0.1, as in the tests.
            stack.env["LOGFLOW_ALLOW_PRIVATE_WEBHOOKS"] = "1"
            data = {"loaded_now": marker is None}
            if marker is None:
                servers.log("loading %d rows (cached in %s for the next runs)" % (args.rows, server.base))
                marker = viewer_bench.load(stack, args, marker_path)
            else:
                viewer_bench.reset(stack, marker)
            settings = config.load(stack.env)
            tasks.configure(settings)
            with models.database.connection_context():
                project = models.Project.get(models.Project.name == viewer_bench.MAIN)
                # An earlier run's rules, with their evaluations and notifications.
                models.SavedSearch.delete().where(models.SavedSearch.project == project).execute()
                servers.log("topping %s up to an hour past now" % viewer_bench.MAIN)
                data["topped_up"], until = top_up(stack, marker, project.id, args.rows)
                data["topped_to"] = time.strftime("%H:%M UTC", time.gmtime(until))
                rules = make_rules(project, args.rules, args.rows, settings, receiver.url)
                park_rules()
            passes = evaluation_passes(settings, rules, args.passes)
            with models.database.connection_context():
                # Part 1's notifications are not sent: the ingestion runs must not carry them.
                models.Notification.delete().execute()
            stack.start_processes()
            info["web"] = web.describe(stack.web)
            stack.add_project("ingest")
            key = stack.manage("create-key", "ingest")
            stack.single_body = stack.write_body("single.json", servers.log_record(0))
            stack.batch_body = stack.write_body("batch.json", [servers.log_record(i) for i in range(100)])
            evaluations = Evaluations(len(rules), args.every)
            ingested = ingestion(stack, args, key, evaluations)
            burst = after_burst(stack, args, key, evaluations) if args.burst else None
    report(info, marker, data, rules, passes, ingested, burst, args)
    print("\ntook %.0f s; %s at the end" % (time.monotonic() - began, viewer_bench.load_text()))


if __name__ == "__main__":
    main()
