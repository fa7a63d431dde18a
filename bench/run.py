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
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time

from meters import Sampler, other_load, read_profile, start_profiles
from reporting import machine, median, report
from servers import Stack, log, removed_unless_kept
from traffic import copy_ceiling, end_to_end, paced, throughput
import web  # bench/web.py: the Procfile's web line

# Seconds per throughput run, records per end-to-end run, repeats (medians).
PLANS = {
    "full": dict(seconds=10, repeats=3, e2e_single=20_000, e2e_batch=300_000,
                 burst=1_000_000, copy_rows=300_000),
    "quick": dict(seconds=5, repeats=1, e2e_single=5_000, e2e_batch=50_000,
                  burst=200_000, copy_rows=50_000),
}


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
