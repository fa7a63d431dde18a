"""LogFlow with its push to Redis replaced by an append to a local file: not a mode of LogFlow.

Served by bench/buffer_ceiling.py on the Procfile's web line (`bench.buffered:app`), it is the
upper bound of a per-host buffer (each web process appends to a file on its own
disk; a forwarder would move the files to Redis in bulk): everything else a
request does is LogFlow's code, unchanged. Nothing reads the files, and there is
no forwarder, queue bound or rate limit, so the real design would be slower.
"""
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logflow  # noqa: E402
import tasks  # noqa: E402

app = logflow.create_app()
# One file per worker process: gunicorn imports this module after it forks.
os.makedirs(tasks.runtime.settings.data_dir, exist_ok=True)
buffer = open(os.path.join(tasks.runtime.settings.data_dir, "buffer-%d.log" % os.getpid()), "ab")
lock = threading.Lock()


def append(payload, writers, records, limit=None, counters=()):
    """RedisSpool.push's signature: the payload leaves the process (a write to the page cache) and no writer is woken."""
    with lock:
        buffer.write(payload + b"\n")
        buffer.flush()
    return []


tasks.runtime.spool.push = append
