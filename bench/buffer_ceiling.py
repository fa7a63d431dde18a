#!/usr/bin/env python3
"""Single POSTs if LogFlow's 202 waited for a local file append instead of Redis: the per-host buffer's ceiling.

    python3 bench/buffer_ceiling.py [--repeats 4] [--seconds 5]

docs/benchmarks.md ("Why single POSTs stay below 0.70 of hello") explains why:
a per-host disk buffer is the one design found that could take single POSTs
past the queued ceiling (hello + one LPUSH). This measures its upper bound
before anyone builds it: bench/buffered.py, LogFlow unchanged but for the push,
beside LogFlow, hello and hello + LPUSH, under the same gunicorn, back to back
in each round. Prints requests/s and web CPU per request of each round, then
the medians and their ratios to hello.
"""
import argparse
import statistics
import sys
import tempfile

import servers  # bench/servers.py: the stack
import traffic  # bench/traffic.py: wrk

APPS = ("LogFlow", "LogFlow, append", "hello", "hello + LPUSH")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    options = parser.parse_args()
    args = argparse.Namespace(workers=None, threads=None, consumers=1, gunicorn_arg=[], connections=16,
                              balance=False, wrk_threads=1, aof=False)
    rates = {name: [] for name in APPS}
    with servers.Stack(args, tempfile.mkdtemp(prefix="logflow-buffer-")) as stack:
        stack.start()
        buffered_url = stack.start_gunicorn("logflow-buffered", "bench.buffered:app")
        _, key = stack.add_project("buffer")
        urls = dict(zip(APPS, (stack.logflow_url, buffered_url, stack.hello_url, stack.hello_url + "/queued")))
        for round_number in range(options.repeats):
            for name in APPS:
                result = traffic.throughput(stack, urls[name], stack.single_body, key, options.seconds, 1)
                group = "hello web" if name.startswith("hello") else "logflow web"
                web_ms = result["cpu"]["groups"][group] / result["requests"] * 1000
                rates[name].append(result["req_s"])
                print("round %d  %-16s %6.0f req/s  web CPU %.3f ms/request  non-2xx %d" % (
                    round_number + 1, name, result["req_s"], web_ms, result["non2xx"]), flush=True)
    hello = statistics.median(rates["hello"])
    print("\nmedian of %d rounds of %d s, single-record POSTs:" % (options.repeats, options.seconds))
    for name in APPS:
        rate = statistics.median(rates[name])
        print("  %-16s %6.0f req/s  %.2f of hello" % (name, rate, rate / hello))


if __name__ == "__main__":
    sys.exit(main())
