"""What the stack's processes use during a phase: CPU per group (Meter), peak memory (Sampler), py-spy profiles."""
import contextlib
import os
import re
import resource
import subprocess
import threading
import time

from servers import CLOCK_TICK, GROUPS, WRITERS, proc_stat


def machine_busy():
    """CPU seconds all cores have been busy since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:8]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICK  # less idle and iowait


class Meter:
    """CPU seconds per group over a phase, and what other processes on the machine used meanwhile."""

    def __init__(self, stack):
        self.stack = stack
        self.start = self.snapshot()

    def snapshot(self):
        ours = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        groups, workers = self.stack.cpu()
        return {"wall": time.monotonic(), "busy": machine_busy(), "groups": groups, "workers": workers,
                # This script and what it ran and reaped (wrk, manage.py).
                "bench": sum(usage.ru_utime + usage.ru_stime for usage in ours)}

    def stop(self):
        """{"wall", "groups": {group: CPU s}, "workers", "bench", "other"}: other = busy cores minus everything ours."""
        end, start = self.snapshot(), self.start
        groups = {group: end["groups"][group] - start["groups"][group] for group in GROUPS}
        bench = end["bench"] - start["bench"]
        busy = end["busy"] - start["busy"]
        workers = {label: end["workers"][label] - start["workers"].get(label, 0) for label in end["workers"]}
        return {"wall": end["wall"] - start["wall"], "groups": groups, "workers": workers, "bench": bench,
                "other": max(0.0, busy - sum(groups.values()) - bench)}


class Sampler:
    """Peak RSS of every LogFlow process (from /proc) and the spool's peak backlog, sampled every ~0.5 s in a thread."""

    def __init__(self, stack, interval=0.5):
        self.stack, self.interval = stack, interval
        self.peak = {}      # label → peak MiB (postgres backends: the largest one)
        self.backends = 0   # most postgres backends at once
        self.total = 0      # peak of the sum over all processes
        self.queued = 0     # most records waiting in one writer's queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self):
        total, backends = 0, 0
        for pid, label in self.stack.pids().items():
            if label.startswith("hello"):
                continue  # the ceiling's gunicorn idles meanwhile
            with contextlib.suppress(OSError):  # exited since the listing
                rss = proc_stat(pid)["rss"]
                total += rss
                backends += label == "postgres backend"
                self.peak[label] = max(self.peak.get(label, 0), rss)
        self.total = max(self.total, total)
        self.backends = max(self.backends, backends)
        self.queued = max([self.queued] + [self.stack.spool.queued_records(writer) for writer in WRITERS])


def start_profiles(stack, seconds, out_dir):
    """py-spy record (raw folded stacks) of every LogFlow gunicorn worker and consumer for `seconds`.

    Two views each: "cpu" samples only the thread holding the GIL (where the
    process spends its Python CPU), "wall" every active thread (where requests
    and batches wait, e.g. on Redis or PostgreSQL).
    """
    spies = []
    for pid, label in stack.pids().items():
        if label.startswith("logflow gunicorn worker") or label.startswith("consumer"):
            for view, flags in (("cpu", ["--gil"]), ("wall", [])):
                path = os.path.join(out_dir, "%s.%s.spy" % (label.replace(" ", "_"), view))
                spies.append(subprocess.Popen(
                    ["py-spy", "record", "--nonblocking", "--format", "raw", "-d", str(seconds),
                     "-p", str(pid), "-o", path, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def read_profile(path, own_files=("logflow.py", "records.py", "spool.py", "spool_redis.py", "spool_sqlite.py", "tasks.py",
                                  "storage.py", "models.py")):
    """From a py-spy raw profile: samples, the top functions by own time, and LogFlow's functions by total time."""
    own, total, samples = {}, {}, 0
    with open(path) as profile:
        for line in profile:
            stack, _, count = line.rstrip().rpartition(" ")
            # "func (file.py:123)" → "func (file.py)": a function's lines count as one.
            frames, count = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")], int(count)
            samples += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                if any("(%s)" % name in frame for name in own_files):
                    total[frame] = total.get(frame, 0) + count
    top = lambda counts: [(n / samples, name) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6]]
    return {"samples": samples, "own": top(own), "logflow_total": top(total)}


def other_load(seconds=1.0):
    """Share of all cores busy over `seconds` before anything of ours runs: the machine's other load."""
    start = machine_busy()
    time.sleep(seconds)
    return (machine_busy() - start) / (seconds * os.cpu_count())
