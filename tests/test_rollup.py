"""The per-minute counts (models.LogCount): equal to the rows through redelivery, pruning and rebuilds, on both backends."""
import collections
import datetime
import random
import threading
import uuid

import pytest

import models
import query
import records
import spool
import storage
from models import Log, LogCount, Project


START = datetime.datetime(2026, 11, 27, 8, 0, 0)
RECEIVED = "2026-11-27T12:00:00.000000Z"


def at(moment):
    """A time as the spool carries it."""
    return moment.isoformat(timespec="microseconds") + "Z"


def record(moment, level="INFO", message="m"):
    return {"id": str(uuid.uuid4()), "level": level, "message": message, "metadata": {}, "timestamp": at(moment)}


def items(project_id, batch):
    """The items a consumer hands the database writer for these records."""
    return spool.decode([spool.encode(project_id, RECEIVED, batch)])


def write(project_id, batch):
    return storage.DatabaseWriter().write(items(project_id, batch))


def counts():
    """{(project, minute, level): n} as LogCount holds them; a zero must not be kept."""
    with models.database.connection_context():
        stored = {(row.project_id, row.minute, row.level): row.number for row in LogCount.select()}
    assert all(number > 0 for number in stored.values()), stored
    return stored


def counted_rows():
    """The same, counted from the rows themselves (in Python, from the timestamps Peewee reads)."""
    with models.database.connection_context():
        return dict(collections.Counter(
            (row.project_id, (row.timestamp - models.EPOCH) // models.MINUTE, row.level)
            for row in Log.select(Log.project, Log.timestamp, Log.level)))


def random_records(rng, number, start=START, span=datetime.timedelta(hours=6)):
    """Records at random microseconds over span from start, random levels, some on a minute's first microsecond."""
    batch = []
    for _ in range(number):
        moment = start + datetime.timedelta(microseconds=rng.randrange(span // datetime.timedelta(microseconds=1)))
        if rng.random() < 0.1:
            moment = moment.replace(second=0, microsecond=0)
        batch.append(record(moment, rng.choice(records.LEVELS)))
    return batch


def test_histograms_of_whole_minutes_equal_the_rows_for_random_ranges_and_levels(bound, project):
    rng = random.Random(13)
    sent = random_records(rng, 3000)
    for start in range(0, len(sent), 500):
        write(project.id, sent[start:start + 500])
    assert counts() == counted_rows()
    stamps = [(datetime.datetime.fromisoformat(each["timestamp"][:-1]), each["level"]) for each in sent]
    for attempt in range(60):
        since = START + datetime.timedelta(seconds=rng.uniform(-600, 5 * 3600))
        if attempt % 3 == 0:
            since = since.replace(second=0, microsecond=0)  # on a minute: no part-minute at that edge
        until = since + datetime.timedelta(seconds=rng.choice([3601, 7200, 4 * 3600, 86400]) * rng.uniform(1, 1.5))
        levels = frozenset(rng.sample(records.LEVELS, rng.randint(1, len(records.LEVELS))))
        log_filter = query.LogFilter(levels=levels, since=since, until=until)
        with models.database.connection_context(), query.time_limited(0):
            answer = query.histogram(project.id, log_filter, models.utcnow())
        assert answer["interval_ms"] % 60000 == 0
        width = datetime.timedelta(milliseconds=answer["interval_ms"])
        for bucket in answer["buckets"]:
            start = datetime.datetime.fromisoformat(bucket["start"][:-1])
            expected = collections.Counter(level for moment, level in stamps
                                           if level in levels and since <= moment < until
                                           and start <= moment < start + width)
            assert {level: n for level, n in bucket["counts"].items() if n} == expected, (since, until, start)


def test_the_histogram_reads_the_counts_for_whole_minutes_and_the_rows_otherwise(bound, project):
    """A count with no rows behind it shows which one the histogram read."""
    write(project.id, [record(START + datetime.timedelta(seconds=30), "ERROR", "boom")])
    with models.database.connection_context():
        LogCount.add({(project.id, (START - models.EPOCH) // models.MINUTE, "ERROR"): 4})
    # Two hours: 120 buckets of one minute.
    hours = dict(since=START - datetime.timedelta(hours=1), until=START + datetime.timedelta(hours=1))

    def total(**changes):
        with models.database.connection_context(), query.time_limited(0):
            return query.histogram(project.id, query.LogFilter(**{**hours, **changes}), models.utcnow())["total"]
    assert total() == 5
    assert total(levels=frozenset({"ERROR"})) == 5 and total(levels=frozenset({"INFO"})) == 0
    # Text and metadata filters, and buckets shorter than a minute, count the rows.
    assert total(text="boom") == 1
    assert total(metadata=((("user",), ("alice",)),)) == 0
    assert total(since=START, until=START + datetime.timedelta(minutes=1)) == 1
    # A part-minute at an edge is counted from the rows, the whole minutes from the counts.
    assert total(since=START + datetime.timedelta(seconds=29), until=START + datetime.timedelta(hours=2)) == 1
    assert total(since=START - datetime.timedelta(hours=2), until=START + datetime.timedelta(seconds=31)) == 1
    assert total(since=START - datetime.timedelta(hours=2), until=START + datetime.timedelta(minutes=1)) == 5


def test_a_redelivered_batch_is_counted_once(bound, project):
    first = [record(START + datetime.timedelta(seconds=n), level) for n, level in enumerate(records.LEVELS * 3)]
    second = [record(START + datetime.timedelta(minutes=1, seconds=n)) for n in range(4)]
    assert write(project.id, first) == 15
    assert write(project.id, first) == 15  # all stored already (PostgreSQL: ON CONFLICT DO NOTHING)
    assert write(project.id, first[:5] + second) == 9  # partly stored
    # One id twice in one batch: one row (PostgreSQL's COPY refuses it, the fallback keeps the first).
    again = record(START + datetime.timedelta(minutes=2), "WARN")
    assert write(project.id, [again, dict(again, level="ERROR")]) == 2
    minute = (START - models.EPOCH) // models.MINUTE
    assert counts() == counted_rows() == {
        **{(project.id, minute, level): 3 for level in records.LEVELS},
        (project.id, minute + 1, "INFO"): 4, (project.id, minute + 2, "WARN"): 1}


def test_concurrent_writers_of_the_same_minutes_count_every_row_once(bound, project):
    """Consumers upsert the same count rows at once, some of them redelivering: no deadlock, no row lost or doubled."""
    rng = random.Random(7)
    batches = [random_records(rng, 200, span=datetime.timedelta(minutes=3)) for _ in range(24)]
    # Every batch comes twice, once merged with another: redelivery and new rows in one transaction.
    work = batches + [batches[n] + batches[(n + 1) % len(batches)] for n in range(len(batches))]
    rng.shuffle(work)
    errors = []

    def consume(share):
        try:
            for batch in share:
                write(project.id, batch)
        except Exception as error:  # collected for the assertion below, with its type
            errors.append(error)
    threads = [threading.Thread(target=consume, args=(work[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert sum(counts().values()) == 24 * 200
    assert counts() == counted_rows()


def test_pruning_removes_the_counts_of_the_rows_it_deletes(bound, project, monkeypatch):
    monkeypatch.setattr(storage, "PRUNE_BATCH_ROWS", 7)  # many batches, some ending mid-minute
    rng = random.Random(3)
    cutoff = datetime.date(2026, 11, 27)
    midnight = datetime.datetime.combine(cutoff, datetime.time())
    other = Project.create(name="other")
    sent = random_records(rng, 300, start=midnight - datetime.timedelta(minutes=30), span=datetime.timedelta(hours=1))
    write(project.id, sent)
    write(other.id, sent)
    before = counted_rows()
    expired = sum(1 for each in sent if each["timestamp"] < at(midnight))
    assert storage.DatabaseWriter().prune(project.id, cutoff, cutoff, dry_run=True) == {"deleted": expired}
    assert counts() == before
    assert storage.DatabaseWriter().prune(project.id, cutoff, cutoff) == {"deleted": expired}
    assert counts() == counted_rows()
    midnight_minute = (midnight - models.EPOCH) // models.MINUTE
    assert min(minute for project_id, minute, _ in counts() if project_id == project.id) >= midnight_minute
    assert {key: n for key, n in counts().items() if key[0] == other.id} == {
        key: n for key, n in before.items() if key[0] == other.id}


def test_pruning_rows_stored_before_the_counts_leaves_no_negative_count(bound, project):
    """Rows never counted (stored by an older version) that expire take no count below zero with them."""
    midnight = datetime.datetime(2026, 11, 27)
    with models.database.connection_context():
        Log.insert_many([{"id": uuid.uuid4(), "project": project.id, "level": "INFO", "message": "old", "metadata": {},
                          "timestamp": midnight - datetime.timedelta(seconds=n + 1), "received_at": midnight}
                         for n in range(5)]).execute()
    write(project.id, [record(midnight - datetime.timedelta(seconds=2))])  # one counted row in the same minute
    storage.DatabaseWriter().prune(project.id, midnight.date(), midnight.date())
    assert counts() == counted_rows() == {}


def test_rebuild_counts_what_was_stored_without_counts_and_is_safe_to_run_again(bound, project, run):
    rng = random.Random(5)
    early = [record(datetime.datetime(1969, 12, 31, 23, 59, 59, 999999)), record(datetime.datetime(1969, 12, 31, 23, 58))]
    write(project.id, random_records(rng, 500) + early)
    written = counts()
    assert written == counted_rows()
    with models.database.connection_context():
        LogCount.delete().execute()  # as a database from before the counts holds them
        Log.insert_many([{"id": uuid.uuid4(), "project": project.id, "level": "DEBUG", "message": "direct",
                          "metadata": {}, "timestamp": START + datetime.timedelta(seconds=n * 7.5),
                          "received_at": START} for n in range(40)]).execute()
    assert counts() == {}
    for _ in range(2):
        result = run("rebuild-counts")
        assert result.exit_code == 0, result.output
        assert result.output == "acme (id %d): counted 542 logs\n" % project.id
        # The database's minutes (models.minute_of) are the writer's (models.minute_of_text), before 1970 too.
        assert counts() == counted_rows()
        assert all(counts()[key] == number for key, number in written.items() if key[2] != "DEBUG")
    assert run("rebuild-counts", "acme").output == "acme (id %d): counted 542 logs\n" % project.id


def test_creating_the_counts_table_counts_the_rows_already_stored(bound, project):
    write(project.id, random_records(random.Random(9), 200))
    expected = counts()
    with models.database.connection_context():
        models.database.drop_tables([LogCount])
    models.create_tables()
    assert counts() == expected == counted_rows()
    models.create_tables()  # a table that exists is left as it is
    assert counts() == expected


def test_a_removed_project_takes_its_counts_with_it(bound, project):
    other = Project.create(name="other")
    for each in (project, other):
        write(each.id, random_records(random.Random(each.id), 50))
    with models.database.connection_context():
        Project.delete().where(Project.id == other.id).execute()  # logs and counts go by ON DELETE CASCADE
    assert counts() == counted_rows() and {key[0] for key in counts()} == {project.id}
