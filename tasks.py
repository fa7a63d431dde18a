"""The one Huey instance and its tasks: drain the spool into the writers.

Run the consumer with `huey_consumer tasks.huey -k thread -w 4 -g TERM`.
Huey messages only say "drain writer X" (shard N of its queue); the records
themselves wait in the spool (spool.py), which hands them out with leases so
that a consumer killed mid-write loses nothing.
"""
import collections
import datetime
import gc
import logging
import os
import random
import socket
import threading
import time

import orjson
import peewee
from huey import Huey, crontab
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import MemoryStorage, RedisStorage, SqliteStorage

import alerts
import config
import metrics
import models
import spool as spools
from storage import DatabaseWriter, FileWriter

logger = logging.getLogger("logflow")


class JSONSerializer(Serializer):
    """Huey messages as JSON: whoever can write to the queue cannot run code here."""

    def _serialize(self, message):
        fields = message._asdict()
        for name in ("eta", "expires_resolved"):
            if fields[name] is not None:
                fields[name] = fields[name].isoformat()
        return orjson.dumps(fields)

    def _deserialize(self, data):
        fields = orjson.loads(data)
        fields["args"] = tuple(fields.get("args") or ())
        for name in ("eta", "expires_resolved"):
            if fields.get(name) is not None:
                fields[name] = datetime.datetime.fromisoformat(fields[name])
        return Message(**{name: fields.get(name) for name in Message._fields})


class SqliteQueueStorage(SqliteStorage):
    """Huey's SQLite storage, creating its folder and tables on first use rather than at import."""

    def __init__(self, name, filename):
        super().__init__(name, filename=filename, create_tables=False)

    def _create_connection(self):
        os.makedirs(os.path.dirname(self.filename) or ".", exist_ok=True)
        connection = super()._create_connection()
        for statement in self.ddl:
            connection.execute(statement)
        return connection


class ClusterQueueStorage(RedisStorage):
    """Huey's Redis storage on a Redis Cluster, through the spool's cluster client.

    Every command RedisStorage sends names one key (its Lua script and its
    MULTI blocks too), so its keys may sit on different nodes and need no hash
    tag; only its client, which it would make from one connection pool, must be the cluster's.
    """

    def __init__(self, name, client):
        self.cluster_client = client
        # RedisStorage hands connection_pool to redis_client below, which ignores it.
        super().__init__(name, connection_pool=client)

    def redis_client(self, connection_pool):
        return self.cluster_client


def create_queue_storage(settings, spool):
    """Huey's storage: Redis in production (sharing the spool's connections), SQLite in dev mode."""
    if settings.redis_url:
        # The spool's pool has timeouts: a hung Redis fails a request, never blocks it.
        if spool.cluster:
            return ClusterQueueStorage("logflow", spool.client)
        return RedisStorage("logflow", connection_pool=spool.client.connection_pool)
    return SqliteQueueStorage("logflow", os.path.join(settings.data_dir, "huey.db"))


class Runtime:
    """What configure() binds: settings, the spool and the writers."""

    settings = None
    spool = None
    writers = {}


runtime = Runtime()


def configure(settings):
    """Bind the database, the spool, the queue and the writers to these settings; connects lazily."""
    models.bind_database(settings)
    runtime.settings = settings
    runtime.spool = spools.open_spool(settings)
    huey.storage = create_queue_storage(settings, runtime.spool)
    runtime.writers = {writer.name: writer for writer in
                       (DatabaseWriter(), FileWriter(settings.log_dir))}


class LogFlowHuey(Huey):
    """Huey whose consumer binds the environment's settings before it starts.

    huey_consumer only imports this module and runs `huey`: importing binds
    nothing, reads no setting and creates no file. The app factory, manage.py
    and tests bind their own settings.
    """

    def create_consumer(self, **options):
        # In the consumer's main thread, before its workers and their startup
        # hooks: a bad setting stops the process here, naming the variable.
        if runtime.settings is None:
            configure(config.load())
        if not runtime.settings.database_url:
            # Dev mode has no set-up step (as in create_app): the minute's alert evaluation
            # must not find the tables missing because the web process has not started yet.
            with models.database.connection_context():
                models.create_tables()
        consumer = super().create_consumer(**options)
        set_up_logging()
        # One line, even with --quiet (which only quiets huey's own logger), so
        # that a person running `honcho start` sees this half start too.
        logger.info("consumer started: %d %s workers; queue %s; %s", consumer.workers,
                    consumer.worker_type, describe_queue(runtime.settings),
                    "; ".join(describe_writers(runtime.settings)))
        return consumer


huey = LogFlowHuey("logflow", results=False, serializer=JSONSerializer(), storage_class=MemoryStorage)


def retry_delay(attempts):
    """Capped exponential backoff with jitter, so failing writers never spin or stampede."""
    settings = runtime.settings
    # The exponent stops growing long before the cap binds: 2.0 ** 1024 overflows,
    # and a batch can fail that often in a long outage (about 13 hours by default).
    delay = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** min(attempts, 64))
    return delay * random.uniform(0.5, 1.0)


@huey.task()
def drain(writer, woken=False, shard=0):
    """Claim one batch from a shard of a writer's queue, write it and acknowledge it.

    `woken` is set by the request that found the writer idle: waiting
    LOGFLOW_BATCH_WAIT_SECONDS first turns a stream of single-record requests
    into batches (one write, one transaction, one fsync each) instead of a
    write per request. Busy writers never wait: follow-up drains do not.
    """
    if woken and runtime.settings.batch_wait_seconds > 0:
        time.sleep(runtime.settings.batch_wait_seconds)
    if runtime.spool.paused(writer, shard):
        # A failed write paused this shard; the failed batch's lease ends with the pause.
        wake_at_next_lease(writer, shard)
        return 0
    batch = runtime.spool.claim(writer, runtime.settings.batch_bytes, shard)
    if batch is None:
        wake_at_next_lease(writer, shard)
        return 0
    if batch.more:
        # Another worker (or consumer) takes the next batch in parallel.
        drain(writer, **of_shard(shard))
    count = write_batch(writer, batch, shard)
    if not batch.more:
        wake_at_next_lease(writer, shard)
    return count


def of_shard(shard):
    """drain's keyword arguments for a shard: none for shard 0, whose messages older consumers take too."""
    return {"shard": shard} if shard else {}


def drain_every_queue():
    """Queue a drain for each shard of each writer's queue."""
    for writer in config.WRITERS:
        for shard in range(runtime.spool.shards):
            drain(writer, **of_shard(shard))


def wake_at_next_lease(writer, shard=0):
    """Schedule one drain for when the earliest leased batch comes back, unless one is scheduled.

    Batches leased by a consumer that died return when their leases run out,
    at different times; this chain collects each as it does, without waiting
    for the once-a-minute sweep.
    """
    delay = runtime.spool.reserve_wakeup(writer, shard)
    if delay is not None:
        drain.schedule(args=(writer,), kwargs=of_shard(shard), delay=delay + 0.05)


def write_batch(writer, batch, shard=0):
    """Write a claimed batch and acknowledge it; on an outage give it back for a retry after a backoff."""
    items = spools.decode(batch.payloads)
    started = time.monotonic()
    try:
        count = store(runtime.writers[writer], items)
        if writer == "db":
            # Before the acknowledgement: if publishing fails, the batch comes back and is
            # published then (live viewers drop the ids they have shown already).
            runtime.spool.publish(written_ids(items))
    except Exception:
        # The backoff follows the writer's failures in a row, not one batch's:
        # during an outage every batch fails, and the writer as a whole waits.
        runtime.spool.add_counters([(metrics.counter("write_failures", writer=writer), 1)])
        streak = runtime.spool.count_failure(writer, shard)
        delay = retry_delay(streak - 1)
        attempts = runtime.spool.fail(writer, batch.id, delay, shard)
        logger.exception("%s writer failed on batch %s (%d records, attempt %d, %d failures in a row);"
                         " pausing it for %.1f s", writer, batch.id, len(items), attempts, streak, delay)
        drain.schedule(args=(writer,), kwargs=of_shard(shard), delay=delay)
        return 0
    runtime.spool.ack(writer, batch.id, shard)
    runtime.spool.remember("last_write:" + writer, repr(time.time()), LAST_WRITE_KEPT_SECONDS)
    runtime.spool.add_counters(metrics.write_observed(writer, count, time.monotonic() - started))
    logger.debug("%s writer stored %d records from batch %s", writer, count, batch.id)
    return count


def written_ids(items):
    """{project id: [level's initial and log id, ...]} of a batch's items, for the live feed (query.feed_item).

    The level lets a live view filtered by level skip the others without
    reading them; ids a writer quarantined are simply not found.
    """
    written = collections.defaultdict(list)
    for project_id, _, record in items:
        written[project_id].append(record["level"][0] + record["id"])
    return written


def store(writer, items):
    """Write items in one go; if a record is to blame, write them one by one and quarantine the culprits.

    An outage error (see storage.py) propagates, so the whole batch is retried
    later; nothing is quarantined because its store was down.
    """
    try:
        return writer.write(items)
    except writer.outage_errors:
        raise
    except Exception as error:
        logger.warning("%s writer refused a batch of %d records (%s: %s); writing them one by one",
                       writer.name, len(items), type(error).__name__, error)
    stored = 0
    for item in items:
        try:
            stored += writer.write([item])
        except writer.outage_errors:
            raise
        except Exception as error:
            with models.database.connection_context():
                entry = models.Quarantined.add(writer.name, item, error)
            runtime.spool.add_counters([(metrics.counter("records_quarantined", writer=writer.name), 1)])
            logger.error("%s writer cannot store record %s of project %s (%s: %s); quarantined as %d",
                         writer.name, item[2].get("id"), item[0], type(error).__name__, error, entry.id)
    return stored


@huey.periodic_task(crontab(minute="*"))
def sweep():
    """Once a minute, wake every writer: picks up batches whose consumer died or whose wake-up was lost."""
    drain_every_queue()


def collect_garbage_rarely():
    """Run Python's cycle collector every 50,000 allocations instead of every 700.

    Records are small dicts that reference counting frees; at the default
    threshold the collector ran several times per 100-record request and per
    decoded batch, each time scanning the young objects: 12 % of the web's CPU
    per batch, 60 % of spool.decode's. Reference cycles are rare here, so
    memory is not at stake.
    """
    gc.set_threshold(50_000, 20, 100)


def set_up_logging():
    """Give the logflow logger a handler in the consumer, once (tests and manage.py bring their own)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(runtime.settings.log_level)


def without_password(url):
    """A store's URL as scheme://host:port/path, never its user, password or query: fit for a log line."""
    scheme, _, rest = url.partition("://")
    # After the last @: an unencoded / ? or # in a password must not make the rest of it the "path".
    location = rest.rpartition("@")[2]
    for mark in "?#":
        location = location.partition(mark)[0]
    return "%s://%s" % (scheme, location)


def describe_queue(settings):
    """Where this consumer takes its work from."""
    if settings.redis_url:
        return without_password(settings.redis_url)
    return os.path.abspath(os.path.join(settings.data_dir, "spool.db"))


def describe_writers(settings):
    """Each configured writer and where it writes."""
    places = {"db": without_password(settings.database_url) if settings.database_url
              else os.path.abspath(settings.sqlite_path),
              "file": os.path.abspath(settings.log_dir)}
    return ["%s writer to %s" % (name, places[name]) for name in settings.storage]


@huey.on_startup()
def start_worker():
    """Set up the logflow logger in the consumer and resume what a dead consumer left behind."""
    collect_garbage_rarely()
    set_up_logging()
    drain_every_queue()


@huey.on_shutdown()
def stop_worker():
    """Say so when a worker stops: after a graceful signal, its last batch is written."""
    logger.info("consumer worker stopped")


# How long `manage.py stats` can tell when a writer last wrote.
LAST_WRITE_KEPT_SECONDS = 30 * 86400
# Each consumer process records a heartbeat this often; /metrics counts the live ones.
HEARTBEAT_SECONDS = 15


def last_write(writer):
    """Epoch seconds of the writer's last acknowledged batch (any consumer), or None."""
    value = runtime.spool.recall("last_write:" + writer)
    return float(value) if value else None


def retention_cutoff(days, today):
    """The first UTC day kept by a retention of `days` days (0: None, keep everything)."""
    return today - datetime.timedelta(days=days) if days else None


def prune(dry_run=False, today=None, writers=config.WRITERS):
    """Apply every project's retention now, through the named writers; returns what was (or would be) removed.

    Rows go by their record's timestamp, files by the date in their name; both
    are kept from midnight UTC `retention_days` days before today. Daily files
    older than today are gzipped. Returns one dict per project: project,
    days, cutoff, and each writer's counts (or its error, when its store is down).
    """
    today = today or models.utcnow().date()
    default = runtime.settings.retention_days
    with models.database.connection_context():
        projects = list(models.Project.select().order_by(models.Project.id))
    report = []
    for project in projects:
        days = project.retention(default)
        cutoff = retention_cutoff(days, today)
        done = {"project": project.name, "id": project.id, "days": days, "cutoff": cutoff}
        for name in writers:
            writer = runtime.writers[name]
            try:
                done[writer.name] = writer.prune(project.id, cutoff, today, dry_run)
            except writer.outage_errors as error:
                # The other writer's store may well be up: prune it anyway, retry this one next time.
                logger.error("%s writer could not prune project %s: %s", writer.name, project.id, error)
                done[writer.name] = {"error": str(error)}
        report.append(done)
    return report


def log_pruned(report):
    """Log what prune() did, a line per project."""
    for done in report:
        logger.info("pruned project %s (%s days): %s", done["id"], done["days"],
                    {name: counts for name, counts in done.items() if name in runtime.writers})


# Consumers prune at this minute of every hour: the database by a periodic
# task, each host's daily files by a thread in each consumer process.
PRUNE_MINUTE = 17


@huey.periodic_task(crontab(minute=str(PRUNE_MINUTE)))
def prune_hourly():
    """Every hour, apply the retention to the database.

    Each consumer's scheduler enqueues this, so with several consumers it runs
    several times an hour; every run after the first finds nothing to do.
    Daily files are not pruned here: whichever consumer dequeues the task runs
    it, and each host has its own LOGFLOW_LOG_DIR (see start_file_pruning).
    """
    log_pruned(prune(writers=("db",)))


# One evaluation pass at a time in a process: a pass slower than a minute must not be joined by the
# next minute's, each holding a worker thread (the rules it would take are claimed by the first).
alert_pass = threading.Lock()


@huey.periodic_task(crontab(minute="*"))
def evaluate_alerts():
    """Every minute, evaluate the alert rules no other consumer took this minute, and send what is due.

    Each consumer's scheduler enqueues this; alerts.claim lets one of them
    evaluate each rule. Notifications whose sending task was lost (a consumer
    killed mid-send) are found here once their lease runs out.
    """
    if not alert_pass.acquire(blocking=False):
        logger.warning("alerts: the last minute's evaluation is still running; it takes the rules due now")
        return
    try:
        evaluate_and_send()
    finally:
        alert_pass.release()


def evaluate_and_send():
    """Evaluate the rules that are due, then queue a sending task for each notification due."""
    try:
        # How far the database lags what was accepted: no rule may fire or resolve on logs still queued.
        lag = metrics.writer_state(runtime.spool, "db", time.time()).oldest_seconds or 0.0
        behind = replica_lag()
        with models.database.connection_context():
            alerts.evaluate_due(runtime.settings, lag, replica_lag_seconds=behind)
            due = alerts.due_notifications()
    except (peewee.DatabaseError, spools.SpoolUnavailable) as error:
        # A store down, or the tables not made yet (init-db): said once a minute, tried again the next.
        logger.error("alerts not evaluated this minute: %s",
                     str(error).strip().split("\n")[0] or type(error).__name__)
        return
    for notification_id in due:
        send_notification(notification_id)


def replica_lag():
    """Seconds the read replica's counts are behind the primary's rows (None: behind by an unknown time), or
    the error when it does not answer.

    A replica that does not answer is not asked again for each rule: with a
    host that does not answer, each count would wait out its connect timeout
    (5 s), a pass of 100 rules most of ten minutes. alerts.evaluate_due notes
    the error on every rule due instead.
    """
    try:
        return models.replica_lag_seconds()
    except peewee.DatabaseError as error:
        logger.warning("alerts: the read replica does not answer: %s", str(error).strip().split("\n")[0])
        return error


@huey.task()
def send_notification(notification_id):
    """One attempt to deliver a notification; a failed one that may succeed later is scheduled again."""
    with models.database.connection_context():
        outcome = alerts.deliver(notification_id, runtime.settings, runtime.spool.add_counters)
        if outcome == "retry":
            due_at = models.Notification.get_by_id(notification_id).due_at
            send_notification.schedule((notification_id,), delay=max(0.0, (due_at - models.utcnow()).total_seconds()))


def prune_files(today=None):
    """Apply every project's retention to this host's daily files and gzip past days'."""
    log_pruned(prune(today=today, writers=("file",)))


def seconds_until_minute(minute, now):
    """Seconds from `now` (epoch seconds) to the next start of that minute of an hour."""
    return (minute * 60 - now) % 3600 or 3600


def prune_files_hourly():
    """At minute PRUNE_MINUTE of every hour, prune this host's daily files, until the process ends."""
    while True:
        time.sleep(seconds_until_minute(PRUNE_MINUTE, time.time()))
        try:
            prune_files()
        except DatabaseWriter.outage_errors as error:
            # The projects' retentions come from the database; the files wait for the next hour.
            logger.error("cannot prune this host's daily files: %s", error)
        except Exception:
            # Anything else is a bug or a damaged store: say so and keep the
            # thread, or this host would never prune its files again.
            logger.exception("pruning this host's daily files failed; trying again next hour")


def beat():
    """Record this consumer process's heartbeat in the spool's store."""
    runtime.spool.beat("%s:%d" % (socket.gethostname(), os.getpid()), time.time())


class ProcessThreads:
    """The pid that started each of this module's threads: one per process, however many workers start."""

    started = {}
    lock = threading.Lock()


def start_once(name, target):
    """Start a daemon thread running target, unless this process started it already."""
    with ProcessThreads.lock:
        if ProcessThreads.started.get(name) == os.getpid():
            return
        ProcessThreads.started[name] = os.getpid()
    threading.Thread(target=target, name=name, daemon=True).start()


@huey.on_startup()
def start_heartbeat():
    """Start this process's heartbeat thread, once.

    Not a periodic task: any consumer may run the task another consumer's
    scheduler enqueued, so a task would not say which consumers are alive.
    """
    start_once("logflow-heartbeat", beat_forever)


@huey.on_startup()
def start_file_pruning():
    """Start this process's thread that prunes its host's daily files hourly, once.

    Not a periodic task, for the heartbeat's reason: the files to prune are
    this host's. Consumers on one host prune the same files safely: compress()
    takes the lock the writers take.
    """
    start_once("logflow-file-pruning", prune_files_hourly)


def forget_empty_claims():
    """Clear what empty claims of versions before 6420e63 left in Redis: once per consumer process, from its heartbeat thread."""
    for writer in config.WRITERS:
        try:
            removed = runtime.spool.forget_empty_claims(writer)
        except spools.SpoolUnavailable as error:
            logger.warning("cannot clear stale batch counts (next start will): %s", error)
            return
        if removed:
            logger.info("cleared %d stale batch counts of the %s writer", removed, writer)


def beat_forever():
    """Beat every HEARTBEAT_SECONDS until the process ends."""
    forget_empty_claims()
    while True:
        try:
            beat()
        except spools.SpoolUnavailable as error:
            logger.warning("cannot record this consumer's heartbeat: %s", error)
        time.sleep(HEARTBEAT_SECONDS)
