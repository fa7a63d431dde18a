"""CPU per honest OTLP export, through otlp.decode and records.normalize_many, in process.

    python3 bench/otlp_decode.py [--rounds 5] [TREE ...]

A 1,000-record export (10 attributes a record, as an SDK with a web
framework's instrumentation sends them; one resource and scope) in OTLP/JSON
and in protobuf. Each TREE is a checkout of LogFlow (default: this one),
measured in its own process, the trees in turn within each round so the
machine's drift hits all alike; `git worktree add /tmp/old <commit>` gives
an earlier version to compare. Prints each round's best of 7, then medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the tree measured: its own otlp, records and tests/test_otlp helpers.
MEASURE = r"""
import datetime, json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import orjson, config, otlp, records
from test_otlp import as_protobuf, attribute, export, text
limits = config.Settings()
logs = [{"timeUnixNano": str(1795773600_123456_789 + n), "severityNumber": 9, "body": text("request %d served" % n),
         "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
         "attributes": [attribute("http.method", text("GET")), attribute("http.status", {"intValue": "200"}),
                        attribute("duration", {"doubleValue": 1.5}), attribute("user", text("u%d" % n)),
                        attribute("tags", {"arrayValue": {"values": [text("a"), text("b")]}})] * 2}
        for n in range(1000)]
request = export(*logs, resource=[attribute("service.name", text("billing"))], scope={"name": "s", "version": "1"})
bodies = {"OTLP/JSON": (orjson.dumps(request), "application/json"),
          "protobuf": (as_protobuf(request), "application/x-protobuf")}
now, result = datetime.datetime.utcnow(), {}
for name, (body, content_type) in bodies.items():
    times = []
    for _ in range(7):
        started = time.process_time()
        found, _ = otlp.decode(body, content_type, limits)
        count, _, errors, _ = records.normalize_many(found, now, limits)
        times.append(time.process_time() - started)
    assert count == 1000 and not errors, errors[:3]
    result[name] = 1000 * min(times)
print(json.dumps(result))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("trees", nargs="*", default=[ROOT])
    options = parser.parse_args()
    results = {tree: [] for tree in options.trees}
    for number in range(options.rounds):
        order = options.trees if number % 2 == 0 else options.trees[::-1]
        for tree in order:
            output = subprocess.run([sys.executable, "-c", MEASURE, os.path.abspath(tree)], check=True,
                                    capture_output=True, text=True).stdout
            results[tree].append(json.loads(output))
            print("round %d  %-30s %s" % (number + 1, tree, "  ".join(
                "%s %.1f ms" % item for item in results[tree][-1].items())), flush=True)
    print("\nmedian CPU ms per 1,000-record export (best of 7 each round), %d rounds" % options.rounds)
    for tree, rounds in results.items():
        print("%-30s %s" % (tree, "  ".join("%s %.1f" % (name, statistics.median(r[name] for r in rounds))
                                           for name in rounds[0])))


if __name__ == "__main__":
    sys.exit(main())
