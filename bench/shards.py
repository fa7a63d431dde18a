#!/usr/bin/env python3
"""End-to-end records/s with the spool in 1, 2 and 4 shards, on one Redis and on a 3-primary Redis Cluster.

    python3 bench/shards.py            # medians of 3 runs of each (about 5 minutes)
    python3 bench/shards.py --quick    # one shorter run of each (about 2 minutes)

One PostgreSQL, one Redis and a Redis Cluster (three primaries, no
replicas: tests/services.py) on 127.0.0.1; for each configuration, the
Procfile's web line and one consumer are started with REDIS_URL and
LOGFLOW_SPOOL_SHARDS set, wrk sends 100-record requests and then single
records (bench/traffic.py's end_to_end: until every record is in PostgreSQL
and in the daily files), and the processes are stopped. Each repeat runs the
six configurations in turn, so a drifting load hits all alike. On one
machine the shards share its cores: the question here is only whether shards
cost throughput (docs/scaling.md).
"""
import argparse
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time

from reporting import machine, spread
from servers import CONSUMER_ARGS, HUEY_CONSUMER, Stack, log, log_record, removed_unless_kept
from traffic import end_to_end
import services  # tests/services.py: throwaway PostgreSQL, Redis and Redis Cluster
import spool_redis
import web  # bench/web.py: the Procfile's web line

PLANS = {"full": dict(repeats=3, batch=200_000, single=10_000),
         "quick": dict(repeats=1, batch=100_000, single=5_000)}
SHARDS = (1, 2, 4)
KINDS = ("one Redis", "Redis Cluster")


class ShardStack(Stack):
    """PostgreSQL, one Redis and a Redis Cluster for the whole run; LogFlow's processes per configuration."""

    def start(self):
        self.single = services.start_redis(os.path.join(self.workdir, "redis"))
        self.cluster = services.start_redis_cluster(os.path.join(self.workdir, "cluster"))
        self.redis = self.single
        self.pg = services.start_postgres(os.path.join(self.workdir, "pg"))
        self.db_url = self.pg.url
        self.set_environment()
        self.manage("init-db")
        self.web_args = self.web_flags()
        self.web = web.settings(self.env, extra_args=self.web_args)
        self.single_body = self.write_body("single.json", log_record(0))
        self.batch_body = self.write_body("batch.json", [log_record(i) for i in range(100)])

    def configure(self, kind, shards):
        """Start the web line and the consumers on that Redis with that many shards, the store flushed."""
        self.redis = self.cluster if kind == "Redis Cluster" else self.single
        self.env.update(REDIS_URL=self.redis.url, LOGFLOW_SPOOL_SHARDS=str(shards))
        self.spool = spool_redis.RedisSpool(self.redis.url, 30, shards=shards)
        self.spool.client.flushdb()
        self.logflow_url = self.start_gunicorn("logflow")
        for number in range(self.args.consumers):
            self.spawn("consumer-%d" % number, [sys.executable, HUEY_CONSUMER, *CONSUMER_ARGS])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shorter run of each")
    parser.add_argument("--consumers", type=int, default=1, help="huey_consumer processes, 4 threads each")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (process logs, files)")
    args = parser.parse_args()
    # What Stack reads of bench/run.py's arguments, at run.py's defaults.
    args.workers = args.threads = None
    args.gunicorn_arg, args.balance, args.aof, args.wrk_threads = [], False, False, 1
    plan = PLANS["quick" if args.quick else "full"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    began = time.monotonic()
    info = machine()
    info.update(command=shlex.join(["python3", *sys.argv]), load_start=os.getloadavg()[0])
    workdir = tempfile.mkdtemp(prefix="logflow-shards-")
    results = {(kind, shards): {"batch": [], "single": []} for kind in KINDS for shards in SHARDS}
    with removed_unless_kept(workdir, args):
        with ShardStack(args, workdir) as stack:
            log("starting PostgreSQL, Redis and a 3-primary Redis Cluster in %s" % workdir)
            stack.start()
            for repeat in range(plan["repeats"]):
                for kind, shards in results:
                    log("run %d/%d: %s, %d shard(s)" % (repeat + 1, plan["repeats"], kind, shards))
                    stack.configure(kind, shards)
                    name = "%s-%d-%d" % ("cluster" if kind == "Redis Cluster" else "redis", shards, repeat)
                    runs = results[kind, shards]
                    runs["batch"].append(end_to_end(stack, name + "-batch", stack.batch_body, 100, plan["batch"]))
                    runs["single"].append(end_to_end(stack, name + "-single", stack.single_body, 1, plan["single"]))
                    stack.stop_processes()
    info["load_end"] = os.getloadavg()[0]
    report(info, results, plan)
    print("\ntook %.0f s" % (time.monotonic() - began))


def report(info, results, plan):
    """One table: records/s end to end per configuration, and the CPU each part took per 1,000 batched records."""
    print("LogFlow spool shards — %s" % info["date"])
    print("command:   %s" % info["command"])
    print("machine:   %d cores, %s; commit %s" % (info["nproc"], info["memory"], info["commit"]))
    print("servers:   %s" % info["servers"])
    print("runs:      %s; end to end = from the first request until every record is in PostgreSQL and the files"
          % ("1 each" if plan["repeats"] == 1 else "median of %d (min–max), configurations interleaved"
             % plan["repeats"]))
    print("load:      1-min load average %.2f at start, %.2f at end (other helpers' tests share the machine)"
          % (info["load_start"], info["load_end"]))
    print()
    print("%-14s %6s  %-30s %-26s %s" % (
        "Redis", "shards", "%dk in 100-record requests" % (plan["batch"] // 1000),
        "%dk single records" % (plan["single"] // 1000), "CPU ms per 1,000 batched records: web, consumers, Redis"))
    for (kind, shards), runs in results.items():
        batch = runs["batch"]
        print("%-14s %6d  %-30s %-26s %s" % (
            kind, shards, spread(batch, "records_s", "%.0f") + " records/s",
            spread(runs["single"], "records_s", "%.0f") + " records/s",
            ", ".join("%.1f" % per_thousand(batch, group) for group in ("logflow web", "consumers", "redis"))))
    lost = sum(run["lost_db"] + run["lost_files"] for runs in results.values() for key in runs for run in runs[key])
    print("records answered 202 but not stored, over every run: %d" % lost)


def per_thousand(runs, group):
    """The median CPU milliseconds a group of processes took per 1,000 records over these runs."""
    return statistics.median(run["cpu"]["groups"][group] * 1e6 / run["records"] for run in runs)


if __name__ == "__main__":
    main()
