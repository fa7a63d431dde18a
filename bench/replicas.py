"""What LOGFLOW_REDIS_REPLICAS costs a push: the spool's push alone, then with WAIT for 1 replica.

python3 bench/replicas.py [PUSHES]  — starts a primary, one replica and three sentinels on
127.0.0.1 (tests/services.py), then pushes PUSHES payloads of 100 records (default 5,000)
from one thread through spool_redis.RedisSpool, over the Sentinel URL, alternating rounds
with LOGFLOW_REDIS_REPLICAS=0 and =1. Prints the median and 99th-percentile latency of a
push and pushes/s for each. Takes about 20 seconds.
"""
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import services  # noqa: E402  (tests/services.py: throwaway Redis servers and sentinels)
import spool  # noqa: E402
import spool_redis  # noqa: E402

ROUNDS = 4


def push_latencies(store, payload, pushes):
    """Seconds each of `pushes` pushes took."""
    latencies = []
    for _ in range(pushes):
        started = time.perf_counter()
        store.push(payload, ["db", "file"], 100)
        latencies.append(time.perf_counter() - started)
    return latencies


def main():
    pushes = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    group = services.start_sentinel_group(tempfile.mkdtemp(prefix="logflow-replicas-"))
    try:
        payload = spool.encode(1, "2026-12-06T00:00:00.000000Z",
                               [{"message": "x" * 100, "level": "INFO"} for _ in range(100)])
        stores = {replicas: spool_redis.RedisSpool(group.url, 30, replicas=replicas) for replicas in (0, 1)}
        results = {0: [], 1: []}
        for _ in range(ROUNDS):
            for replicas, store in stores.items():
                store.client.flushdb()
                results[replicas].extend(push_latencies(store, payload, pushes // ROUNDS))
        for replicas, latencies in results.items():
            latencies.sort()
            print("LOGFLOW_REDIS_REPLICAS=%d: %d pushes of %d bytes, median %.3f ms, p99 %.3f ms, %.0f pushes/s"
                  % (replicas, len(latencies), len(payload), statistics.median(latencies) * 1000,
                     latencies[int(len(latencies) * 0.99)] * 1000, len(latencies) / sum(latencies)))
    finally:
        group.stop()


if __name__ == "__main__":
    main()
