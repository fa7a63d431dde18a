"""A logging handler that ships Python log records to LogFlow; standard library only.

    import logging, client
    logging.getLogger().addHandler(client.LogFlowHandler("http://127.0.0.1:5000/logs", "lf_..."))

emit() only puts the record in a bounded buffer; a background thread sends
batches (gzip, JSON) and retries 408, 429, 5xx and network errors with backoff.
Copy this file into any project: it imports nothing from LogFlow.
"""
import datetime
import gzip
import http.client
import json
import logging
import math
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque

# Every attribute a plain LogRecord has: whatever else a record carries came from `extra=`.
STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Statuses worth sending again: the server was busy, slow or failing, not refusing these records.
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
# Nested values deeper than this become repr() strings.
MAX_DEPTH = 10


def time_ordered_id():
    """A new version 7 UUID (RFC 9562): Unix milliseconds, then 74 random bits.

    The server's id for a record (so a retried batch is stored once), and
    time-ordered like the ids LogFlow makes itself: they keep inserts into its
    primary key's index together (see LogFlow's records.random_uuid).
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 7 << 76  # version
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant: RFC 9562
    return str(uuid.UUID(int=value))


def level_name(levelno):
    """LogFlow's level for a logging level number; a custom level takes the standard one below it."""
    for threshold, name in ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"),
                            (logging.WARNING, "WARN"), (logging.INFO, "INFO")):
        if levelno >= threshold:
            return name
    return "DEBUG"


def jsonable(value, depth=0):
    """value with everything JSON cannot hold (objects, NaN, deep nesting) replaced by repr() strings."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < MAX_DEPTH and isinstance(value, dict):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if depth < MAX_DEPTH and isinstance(value, (list, tuple)):
        return [jsonable(item, depth + 1) for item in value]
    return repr(value)


class LogFlowHandler(logging.Handler):
    """Send log records to LogFlow's POST /logs in batches from a background thread; never blocks or raises."""

    def __init__(self, url, api_key, level=logging.NOTSET, *, batch_size=500, batch_bytes=512 * 1024,
                 flush_interval=1.0, capacity=10000, timeout=10.0, backoff_base=0.5, backoff_max=30.0,
                 close_timeout=5.0):
        super().__init__(level)
        urllib.request.Request(url)  # a malformed URL fails here, at set-up, not in every send
        self.url, self.api_key = url, api_key
        # The server takes at most 1,000 records and 1 MiB (as sent) per request.
        self.batch_size = min(batch_size, 1000)
        self.batch_bytes = min(batch_bytes, 900 * 1024)
        self.flush_interval, self.capacity, self.timeout = flush_interval, capacity, timeout
        self.backoff_base, self.backoff_max, self.close_timeout = backoff_base, backoff_max, close_timeout
        # Records: sent = accepted by LogFlow; dropped = pushed out of a full buffer, or logged after
        # close(); failed = refused by LogFlow, or still unsent when close() gave up. retries = requests.
        self.stats = {"sent": 0, "dropped": 0, "failed": 0, "retries": 0}
        self.deadline = None  # set by close(): after it, unsendable records are given up
        self.reported = set()
        self.undelivered_seen = 0  # dropped + failed when flush() last looked
        self.thread, self.pid = None, None
        self.reset()

    def reset(self):
        """An empty buffer and a fresh lock."""
        self.buffer = deque()  # (monotonic time queued, JSON bytes of one record)
        self.buffered_bytes = 0
        self.queued = self.finished = 0  # records ever buffered, and those since sent, dropped or failed
        self.waiting_flushes = 0
        self.condition = threading.Condition()

    def emit(self, record):
        """Buffer the record for the sender thread; drops the oldest one when the buffer is full."""
        try:
            if threading.current_thread() is self.thread:
                return  # something logged while sending: shipping it could loop forever
            data = json.dumps(self.to_record(record), allow_nan=False).encode()
            if self.pid != os.getpid():
                # handle() holds this lock but emit() is public: racing first callers would each
                # start a sender and swap the buffer. logging re-creates the lock in a forked child.
                with self.lock:
                    if self.pid != os.getpid():
                        self.start()
            with self.condition:
                if self.deadline is not None:
                    self.stats["dropped"] += 1
                    return
                if len(self.buffer) >= self.capacity:
                    self.buffered_bytes -= len(self.buffer.popleft()[1])
                    self.stats["dropped"] += 1
                    self.finished += 1
                self.buffer.append((time.monotonic(), data))
                self.buffered_bytes += len(data)
                self.queued += 1
                # The first record starts the sender's flush_interval clock; a full batch goes at once.
                if (len(self.buffer) == 1 or len(self.buffer) >= self.batch_size
                        or self.buffered_bytes >= self.batch_bytes):
                    self.condition.notify_all()
        except Exception as error:
            self.report("emit", "cannot buffer a record: %r" % error)

    def to_record(self, record):
        """The LogFlow record for a LogRecord: message, level, time, context and extra fields as metadata."""
        metadata = {"logger": record.name, "module": record.module, "function": record.funcName,
                    "line": record.lineno, "path": record.pathname, "thread": record.threadName,
                    "process": record.processName}
        metadata.update((name, value) for name, value in vars(record).items()
                        if name not in STANDARD_ATTRIBUTES)
        formatter = self.formatter or logging.Formatter()
        if record.exc_info:
            metadata["exception"] = formatter.formatException(record.exc_info)
        elif record.exc_text:
            metadata["exception"] = record.exc_text
        if record.stack_info:
            metadata["stack"] = formatter.formatStack(record.stack_info)
        created = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        return {"id": time_ordered_id(),
                "message": self.format(record) if self.formatter else record.getMessage(),
                "level": level_name(record.levelno), "timestamp": created.isoformat(),
                "metadata": jsonable(metadata)}

    def start(self):
        """Start the sender thread (again after a fork, where threads do not survive)."""
        if self.pid is not None:
            # A forked child: the parent sends what it buffered, and may have held the lock at the fork.
            self.reset()
        # A daemon, so it never holds the interpreter open; logging.shutdown() calls close() at exit.
        self.thread = threading.Thread(target=self.run, name="LogFlowHandler", daemon=True)
        self.thread.start()
        self.pid = os.getpid()

    def due(self):
        """True when the buffer holds a batch worth sending now (caller holds the condition)."""
        if not self.buffer:
            return False
        return (len(self.buffer) >= self.batch_size or self.buffered_bytes >= self.batch_bytes
                or self.waiting_flushes > 0 or self.deadline is not None
                or time.monotonic() - self.buffer[0][0] >= self.flush_interval)

    def run(self):
        """The sender thread: take batches from the buffer and deliver them until closed."""
        while True:
            with self.condition:
                while not self.due():
                    if self.deadline is not None:
                        return
                    wait = self.flush_interval - (time.monotonic() - self.buffer[0][0]) if self.buffer else None
                    self.condition.wait(wait)
                if self.past_deadline(time.monotonic()):
                    self.give_up()
                    return
                batch = self.take_batch()
            try:
                sent = self.deliver(batch)
            except Exception as error:  # a bug here must not stop the thread: later records still go
                self.report("sender", "cannot send %d records: %r" % (len(batch), error))
                sent = 0
            with self.condition:
                self.stats["sent"] += sent
                self.stats["failed"] += len(batch) - sent
                self.finished += len(batch)
                self.condition.notify_all()

    def past_deadline(self, moment):
        """True when close() has set a deadline that comes before moment (caller holds the condition)."""
        return self.deadline is not None and moment > self.deadline

    def give_up(self):
        """Count what is still buffered as failed (caller holds the condition)."""
        if self.buffer:
            self.report("gave up", "gave up sending %d records at close" % len(self.buffer))
        self.stats["failed"] += len(self.buffer)
        self.finished += len(self.buffer)
        self.buffer.clear()
        self.buffered_bytes = 0
        self.condition.notify_all()

    def take_batch(self):
        """Pop up to batch_size records and batch_bytes bytes, at least one (caller holds the condition)."""
        batch, size = [], 0
        while self.buffer and len(batch) < self.batch_size:
            data = self.buffer[0][1]
            if batch and size + len(data) > self.batch_bytes:
                break
            self.buffer.popleft()
            self.buffered_bytes -= len(data)
            batch.append(data)
            size += len(data) + 1
        return batch

    def deliver(self, batch):
        """POST a batch until it is answered, retrying what may succeed later; the number stored."""
        body = gzip.compress(b"[" + b",".join(batch) + b"]")
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   "X-API-Key": self.api_key, "User-Agent": "logflow-client/1"}
        attempt = 0
        while True:
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.request_timeout()) as response:
                    return self.accepted(len(batch), response.read())
            except urllib.error.HTTPError as error:
                if error.code not in RETRY_STATUSES:
                    self.report("status %d" % error.code, "LogFlow refused %d records with %d: %s"
                                % (len(batch), error.code, error.read()[:500].decode(errors="replace")))
                    return 0
                retry_after = error.headers.get("Retry-After")
                problem = "status %d" % error.code
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out
                problem = "network: %r" % error
            until = time.monotonic() + self.backoff(attempt, retry_after)
            with self.condition:
                # Other threads notify the condition too: waking early is no reason to retry early.
                self.condition.wait_for(lambda: time.monotonic() >= until or self.past_deadline(until),
                                        until - time.monotonic())
                if self.past_deadline(until):
                    self.report("gave up", "gave up sending %d records at close (last: %s)"
                                % (len(batch), problem))
                    return 0
                self.stats["retries"] += 1
            attempt += 1

    def accepted(self, count, reply):
        """The records a 202 accepted; the rejected ones are never retried (sending them again cannot help)."""
        try:
            summary = json.loads(reply)
            rejected = int(summary.get("rejected", 0))
        except (ValueError, AttributeError, TypeError):
            self.report("reply", "LogFlow answered with an unexpected body: %r" % reply[:200])
            return count
        if rejected:
            self.report("rejected", "LogFlow rejected %d of %d records: %s"
                        % (rejected, count, summary.get("errors", [])[:3]))
        return count - rejected

    def request_timeout(self):
        """The socket timeout of one request: shortened so that close() keeps its deadline."""
        with self.condition:
            if self.deadline is None:
                return self.timeout
            return max(0.1, min(self.timeout, self.deadline - time.monotonic()))

    def backoff(self, attempt, retry_after):
        """Seconds before the next attempt: the server's Retry-After, else exponential; capped, with jitter."""
        try:
            seconds = float(retry_after)
        except (TypeError, ValueError):  # absent, or an HTTP date
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return min(self.backoff_max, seconds) * random.uniform(1.0, 1.2)
        # The exponent stops growing long before the cap binds: 2.0 ** 1024 overflows a float.
        return min(self.backoff_max, self.backoff_base * 2 ** min(attempt, 64)) * random.uniform(0.5, 1.0)

    def report(self, kind, message):
        """Tell stderr about a problem once per kind, as logging's handleError does; never raise."""
        if kind in self.reported or not logging.raiseExceptions:
            return
        self.reported.add(kind)
        try:
            sys.stderr.write("LogFlowHandler: %s\n" % message)
        except Exception:
            pass  # stderr itself is gone (closed at exit): nowhere is left to tell

    def flush(self, timeout=None):
        """Send what is buffered within timeout (default close_timeout) s; True if all since the last flush was accepted."""
        with self.condition:
            target = self.queued
            if self.finished < target and self.thread is not None and self.thread.is_alive():
                self.waiting_flushes += 1
                self.condition.notify_all()
                try:
                    self.condition.wait_for(lambda: self.finished >= target,
                                            self.close_timeout if timeout is None else timeout)
                finally:
                    self.waiting_flushes -= 1
            # "Done" is not "delivered": a record dropped or refused makes the flush that first sees it False.
            undelivered = self.stats["dropped"] + self.stats["failed"]
            delivered = self.finished >= target and undelivered == self.undelivered_seen
            self.undelivered_seen = undelivered
            return delivered

    def close(self):
        """Send what is buffered within close_timeout seconds, then stop; what is left counts as failed."""
        with self.condition:
            if self.deadline is None:
                self.deadline = time.monotonic() + self.close_timeout
            self.condition.notify_all()
            thread = self.thread if self.pid == os.getpid() else None
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, self.deadline - time.monotonic()) + 1.0)
        with self.condition:
            self.give_up()
        super().close()
