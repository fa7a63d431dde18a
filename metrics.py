"""LogFlow's metrics in Prometheus text format, for GET /metrics.

Counters live in the spool's store (a Redis hash; a SQLite table in dev
mode), so every web worker and every consumer adds to the same numbers and
any web process reports them all. A counter is stored under a name such as
"records_written|writer=db"; gauges are read from the spool when scraped.
"""
import collections
import datetime
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

# Upper bounds, in seconds, of the write latency histogram's buckets.
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
# A consumer counts as alive with a heartbeat this recent: four of its beats (tasks.HEARTBEAT_SECONDS).
CONSUMER_ALIVE_SECONDS = 60

COUNTERS = {
    "records_accepted": ("Records accepted (202) per project.", ("project",)),
    "records_rejected": ("Records of a project not accepted, by reason: invalid, too_many, rate_limited, queue_full.",
                         ("project", "reason")),
    "requests_refused": ("Requests refused as a whole, by reason.", ("reason",)),
    "records_written": ("Records stored by a writer.", ("writer",)),
    "write_failures": ("Failed batch writes (the batch is retried after a backoff).", ("writer",)),
    "records_quarantined": ("Records a writer could not store, set aside in quarantine.", ("writer",)),
    "notifications_sent": ("Alert notifications delivered, per channel type.", ("channel",)),
    "notifications_failed": ("Failed attempts to deliver an alert notification, per channel type.", ("channel",)),
}


def counter(name, **labels):
    """The stored name of one counter with its labels."""
    return name + "".join("|%s=%s" % item for item in sorted(labels.items()))


def parse(stored):
    """(name, {label: value}) from a stored counter name."""
    name, *pairs = stored.split("|")
    return name, dict(pair.split("=", 1) for pair in pairs)


def write_observed(writer, records, seconds):
    """The counters one successful batch write adds."""
    bucket = next(bound for bound in WRITE_BUCKETS if seconds <= bound)
    return [(counter("records_written", writer=writer), records),
            (counter("write_seconds_count", writer=writer), 1),
            # Whole microseconds, since the counters are integers.
            (counter("write_seconds_sum_us", writer=writer), round(seconds * 1e6)),
            (counter("write_seconds_bucket", writer=writer, le=str(bucket)), 1)]


class Collector:
    """Builds the metric families from the shared counters and the spool's state at scrape time."""

    def __init__(self, spool, writers, quarantined=None):
        self.spool = spool
        self.writers = writers
        # {writer: records in the quarantine table}, or None when the database did not answer.
        self.quarantined = quarantined

    def collect(self):
        stored = self.spool.counters()
        families = {name: CounterMetricFamily("logflow_" + name, doc, labels=labels)
                    for name, (doc, labels) in COUNTERS.items()}
        histograms = {}
        for key, value in sorted(stored.items()):
            name, labels = parse(key)
            if name in families:
                families[name].add_metric([labels.get(label, "") for label in
                                           COUNTERS[name][1]], value)
            elif name.startswith("write_seconds_"):
                histograms.setdefault(labels["writer"], {})[(name, labels.get("le"))] = value
        yield from families.values()
        yield self.write_seconds(histograms)
        yield from self.gauges()
        yield from self.liveness()
        if self.quarantined is not None:
            yield self.quarantine()

    @staticmethod
    def write_seconds(histograms):
        family = HistogramMetricFamily("logflow_write_seconds", "Time to write one batch, per writer.",
                                       labels=["writer"])
        for writer, values in sorted(histograms.items()):
            running, buckets = 0, []
            for bound in WRITE_BUCKETS:
                running += values.get(("write_seconds_bucket", str(bound)), 0)
                buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
            family.add_metric([writer], buckets, values.get(("write_seconds_sum_us", None), 0) / 1e6)
        return family

    def gauges(self):
        depth = GaugeMetricFamily("logflow_queue_records",
                                  "Records waiting for a writer: queued or written but not acknowledged.",
                                  labels=["writer"])
        oldest = GaugeMetricFamily("logflow_queue_oldest_seconds",
                                   "Age of the oldest request waiting in a writer's queue.",
                                   labels=["writer"])
        paused = GaugeMetricFamily("logflow_writer_paused_seconds",
                                   "Seconds a writer stays paused after a failed write (0: writing).",
                                   labels=["writer"])
        now = time.time()
        for writer in self.writers:
            state = writer_state(self.spool, writer, now)
            depth.add_metric([writer], state.queued)
            oldest.add_metric([writer], state.oldest_seconds or 0.0)
            paused.add_metric([writer], state.paused_seconds)
        return depth, oldest, paused

    def liveness(self):
        alive = GaugeMetricFamily(
            "logflow_consumers_alive",
            "Consumer processes with a heartbeat in the last %d seconds." % CONSUMER_ALIVE_SECONDS)
        newest = GaugeMetricFamily("logflow_consumer_heartbeat_age_seconds",
                                   "Seconds since the newest heartbeat of any consumer.")
        ages = heartbeat_ages(self.spool, time.time())
        alive.add_metric([], consumers_alive(ages))
        # No sample at all when no consumer beat within a day: absent() alerts on that.
        if ages:
            newest.add_metric([], max(0.0, min(ages)))
        return alive, newest

    def quarantine(self):
        family = GaugeMetricFamily("logflow_quarantine_records",
                                   "Records in the quarantine table, per writer (manage.py quarantine list).",
                                   labels=["writer"])
        for writer in self.writers:
            family.add_metric([writer], self.quarantined.get(writer, 0))
        return family


WriterState = collections.namedtuple("WriterState", "queued oldest_seconds paused_seconds")


def writer_state(spool, writer, now):
    """A writer's queue at `now` (epoch seconds): records waiting, the oldest request's wait (None: none waits), its pause."""
    received_at = spool.oldest_received_at(writer)
    oldest = max(0.0, now - epoch(received_at)) if received_at else None
    return WriterState(spool.queued_records(writer), oldest, spool.paused(writer))


def heartbeat_ages(spool, now):
    """Seconds since each consumer's last heartbeat, over the last day."""
    return [now - at for at in spool.heartbeats().values()]


def consumers_alive(ages):
    """How many of these heartbeat ages are recent enough to count their consumer alive."""
    return sum(1 for age in ages if age <= CONSUMER_ALIVE_SECONDS)


def epoch(text):
    """Seconds since the epoch of the RFC 3339 UTC text the spool carries."""
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


def render(spool, writers, quarantined=None):
    """The metrics page, in Prometheus text format; the quarantine gauge only with `quarantined` ({writer: records})."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(spool, writers, quarantined))
    return generate_latest(registry)
