#!/usr/bin/env python3
"""What the Procfile's worker class costs: LogFlow and hello on its web line, against the same line with gthread.

    python3 bench/worker_class.py [--rounds 8] [--seconds 5] [--balance] [--workers N] [--json FILE]

server.BufferingWorker (the web line's) reads each request in the event loop
before giving it a thread; `--worker-class gthread` appended to the same line
is gunicorn's own worker. One stack (bench/run.py's: Redis, PostgreSQL, a
consumer) serves both pairs of gunicorns at once, and each round measures
every figure on both, side by side, in alternating order, so the machine's
drift hits both alike: single-record POSTs (wrk, keep-alive), 100-record
batches, and hello's single POSTs and batches. Then single POSTs paced at half
the lower of the two maximum rates, for latency. Prints each round, then the
medians (min–max), the per-round ratios and the connections wrk saw closed.
"""
import argparse
import json
import os
import sys
import tempfile

import reporting  # bench/reporting.py: the machine's facts, medians and spreads
import servers  # bench/servers.py: the stack
import traffic  # bench/traffic.py: wrk
import web  # bench/web.py: the Procfile's web line

CLASSES = ("BufferingWorker", "gthread")
# extra_args per class: the web line as it is, then with gunicorn's gthread (the last flag wins).
CLASS_ARGS = {"BufferingWorker": [], "gthread": ["--worker-class", "gthread"]}
# (name, app, body, records per request); app is "logflow" or "hello".
KINDS = (("single", "logflow", "single", 1), ("batch", "logflow", "batch", 100),
         ("hello single", "hello", "single", 1), ("hello batch", "hello", "batch", 100))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--balance", action="store_true",
                        help="--worker-connections 16/WORKERS, as bench/run.py --balance (BufferingWorker then closes some"
                             " connections unanswered)")
    parser.add_argument("--workers", type=int, help="gunicorn workers, through WEB_CONCURRENCY (default: the line's)")
    parser.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                        help="one more gunicorn argument for all four gunicorns (repeatable)")
    parser.add_argument("--json", help="also write every run's figures to this file")
    options = parser.parse_args()
    args = argparse.Namespace(workers=options.workers, threads=None, consumers=1, gunicorn_arg=options.gunicorn_arg,
                              connections=16, balance=options.balance, wrk_threads=1, aof=False)
    results = {(kind, name): [] for kind, *_ in KINDS for name in CLASSES}
    paced = {name: [] for name in CLASSES}
    with servers.Stack(args, tempfile.mkdtemp(prefix="logflow-worker-class-")) as stack:
        stack.start()
        urls = {("logflow", "BufferingWorker"): stack.logflow_url, ("hello", "BufferingWorker"): stack.hello_url,
                ("logflow", "gthread"): stack.start_gunicorn("logflow-gthread", None, CLASS_ARGS["gthread"]),
                ("hello", "gthread"): stack.start_gunicorn("hello-gthread", "bench.hello:app",
                                                           CLASS_ARGS["gthread"])}
        bodies = {"single": stack.single_body, "batch": stack.batch_body}
        _, key = stack.add_project("worker-class")
        info = reporting.machine()
        print("%s, commit %s, %d cores; 1-min load average %.2f at start" % (
            info["date"], info["commit"], info["nproc"], os.getloadavg()[0]))
        print("web line: %s; the same + --worker-class gthread; wrk -t1 -c16 (keep-alive), %d s per run"
              % (web.describe(stack.web), options.seconds), flush=True)
        for number in range(options.rounds):
            servers.log("round %d/%d" % (number + 1, options.rounds))
            for kind, app, body, per in KINDS:
                for name in in_turn(number):
                    result = traffic.throughput(stack, urls[app, name], bodies[body], key, options.seconds, per)
                    result["web_ms"] = 1000 * result["cpu"]["groups"][app + " web"] / result["requests"]
                    result["busiest"] = reporting.busiest_worker(result)
                    results[kind, name].append(result)
                    print("round %d  %-13s %-16s %8.0f %s  web CPU %.3f ms/request  p99 %5.1f ms  busiest worker"
                          " %s%%  closed unanswered %d  non-2xx %d  other processes %.0f%%" % (
                              number + 1, kind, name, result["records_s"] if per > 1 else result["req_s"],
                              "records/s " if per > 1 else "requests/s", result["web_ms"], result["p99"],
                              result["busiest"], result["socket_errors"], result["non2xx"],
                              100 * result["cpu"]["other"] / result["cpu"]["wall"] / os.cpu_count()), flush=True)
        rate = min(reporting.median(results["single", name], "req_s") for name in CLASSES) / 2
        for number in range(options.rounds):
            servers.log("paced round %d/%d at %.0f requests/s" % (number + 1, options.rounds, rate))
            for name in in_turn(number):
                result = traffic.paced(stack, urls["logflow", name], stack.single_body, key, options.seconds, rate)
                paced[name].append(result)
                print("paced %d  %-16s %6.0f requests/s  p50 %5.1f ms  p99 %5.1f ms  closed unanswered %d" % (
                    number + 1, name, result["req_s"], result["p50"], result["p99"], result["socket_errors"]),
                    flush=True)
    report(results, paced, rate, options, stack.web.workers)
    if options.json:
        with open(options.json, "w") as output:
            json.dump({"options": vars(options), "rate": rate, "paced": paced,
                       "results": {"%s/%s" % key: runs for key, runs in results.items()}}, output, indent=1)


def in_turn(number):
    """The classes in the order of round `number`: alternating, so neither always goes first."""
    return CLASSES if number % 2 == 0 else CLASSES[::-1]


def report(results, paced, rate, options, workers):
    """The medians (min–max) of each class, and the median (min–max) of the per-round ratios."""
    rows = [("single POST: requests/s", "single", "req_s", "%.0f"),
            ("single POST: web CPU ms per request", "single", "web_ms", "%.3f"),
            ("single POST: p99 ms at the maximum rate", "single", "p99", "%.1f"),
            ("100-record batches: records/s accepted", "batch", "records_s", "%.0f"),
            ("100-record batches: web CPU ms per request", "batch", "web_ms", "%.3f"),
            ("100-record batches: p99 ms at the maximum rate", "batch", "p99", "%.1f"),
            ("hello single POST: requests/s", "hello single", "req_s", "%.0f"),
            ("hello single POST: web CPU ms per request", "hello single", "web_ms", "%.3f"),
            ("hello 100-record batches: records/s", "hello batch", "records_s", "%.0f"),
            ("hello 100-record batches: web CPU ms per request", "hello batch", "web_ms", "%.3f")]
    table = [(label, [reporting.spread(results[kind, name], field, fmt) for name in CLASSES],
              ratios([one[field] for one in results[kind, CLASSES[0]]],
                     [one[field] for one in results[kind, CLASSES[1]]]))
             for label, kind, field, fmt in rows]
    for kind, hello, label in (("single", "hello single", "LogFlow/hello, single POSTs"),
                               ("batch", "hello batch", "LogFlow/hello, batches")):
        per_class = [[ours["req_s"] / theirs["req_s"] for ours, theirs in zip(results[kind, name],
                                                                             results[hello, name])]
                     for name in CLASSES]
        table.append((label, [spread(values, "%.2f") for values in per_class], ratios(*per_class)))
    table.append(("single POST at %.0f requests/s: p99 ms" % rate,
                  [reporting.spread(paced[name], "p99", "%.1f") + " at %.0f/s" % reporting.median(paced[name], "req_s")
                   for name in CLASSES], ratios(*([one["p99"] for one in paced[name]] for name in CLASSES))))
    table.append(("single POST at %.0f requests/s: p50 ms" % rate,
                  [reporting.spread(paced[name], "p50", "%.1f") for name in CLASSES],
                  ratios(*([one["p50"] for one in paced[name]] for name in CLASSES))))
    width = max(len(row[0]) for row in table)
    print("\n%d rounds of %d s, classes in alternating order%s; median (min–max)"
          % (options.rounds, options.seconds, ", --balance" if options.balance else ""))
    print("%-*s  %-28s  %-28s  %s" % (width, "measurement", "BufferingWorker (Procfile)", "gthread",
                                      "BufferingWorker/gthread, per round"))
    for label, cells, ratio in table:
        print("%-*s  %-28s  %-28s  %s" % (width, label, cells[0], cells[1], ratio))
    for name in CLASSES:
        every = [one for kind, *_ in KINDS for one in results[kind, name]] + paced[name]
        print("%s: connections closed unanswered (wrk's socket errors) %d, non-2xx %d, in %d wrk runs" % (
            name, sum(one["socket_errors"] for one in every), sum(one["non2xx"] for one in every), len(every)))
        if workers > 1:  # keep-alive connections stay with the worker that accepted them
            shares = [int(one["busiest"]) for kind, *_ in KINDS for one in results[kind, name]]
            print("    one worker did >= 70%% of the web work in %d of its %d throughput runs"
                  % (sum(share >= 70 for share in shares), len(shares)))


def ratios(first, second):
    """The median (min–max) of first[i] / second[i]: each round's pair, measured back to back."""
    return spread([a / b for a, b in zip(first, second)], "%.3f")


def spread(values, fmt):
    """reporting.spread() of plain numbers."""
    return reporting.spread([{"value": value} for value in values], "value", fmt)


if __name__ == "__main__":
    sys.exit(main())
