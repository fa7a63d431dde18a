"""manage.py stats: records per level over the last hour and day, queue depth and last write per writer."""
import datetime
import re
import time

import models
import tasks
from helpers import drain_all, post_logs
from test_manage import ESCAPED, HOSTILE, assert_no_control_characters
from test_manage import closed_port, unreachable_redis_url  # noqa: F401  (the fixtures)


def table(output):
    """{(project, level): (last hour, last day)} and {writer: (queued, last write)} from stats' output."""
    levels, writers = {}, {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0].isdigit():
            levels[(fields[1], fields[2])] = (int(fields[3]), int(fields[4]))
        elif len(fields) >= 3 and fields[0] in tasks.runtime.writers:
            writers[fields[0]] = (int(fields[1]), " ".join(fields[2:]))
    return levels, writers


def test_stats_counts_levels_queue_and_last_writes(run, client, key, project, bound):
    now = models.utcnow()
    ago = {name: (now - delta).isoformat() + "Z" for name, delta in {
        "now": datetime.timedelta(0), "2 hours": datetime.timedelta(hours=2),
        "2 days": datetime.timedelta(days=2)}.items()}
    post_logs(client, key, [
        {"message": "a", "level": "error", "timestamp": ago["now"]},
        {"message": "b", "level": "error", "timestamp": ago["now"]},
        {"message": "c", "level": "info", "timestamp": ago["2 hours"]},
        {"message": "d", "level": "debug", "timestamp": ago["2 days"]},
    ])
    queued = run("stats")
    assert queued.exit_code == 0, queued.output
    levels, writers = table(queued.stdout)
    # Nothing is written yet: the counts come from the database, the queue holds all four.
    assert levels[("acme", "ERROR")] == (0, 0)
    assert writers == {"db": (4, "none in the last 30 days"), "file": (4, "none in the last 30 days")}

    before = time.time()
    drain_all()
    written = run("stats", "acme")
    levels, writers = table(written.stdout)
    assert levels == {("acme", "DEBUG"): (0, 0), ("acme", "INFO"): (0, 1), ("acme", "WARN"): (0, 0),
                      ("acme", "ERROR"): (2, 2), ("acme", "CRITICAL"): (0, 0)}
    for writer in ("db", "file"):
        assert writers[writer][0] == 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 \(\d+ s ago\)", writers[writer][1])
        assert before <= tasks.last_write(writer) <= time.time()
    assert run("stats", "nosuch").exit_code == 1


def test_stats_shows_the_database_counts_while_the_queue_is_unreachable(run, client, key, unreachable_redis_url):
    post_logs(client, key, [{"message": "a", "level": "error"}, {"message": "b", "level": "info"}])
    drain_all()
    # Nothing listens on the queue's port now; the database is up.
    result = run("stats", REDIS_URL=unreachable_redis_url)
    levels, writers = table(result.stdout)
    assert writers == {}
    assert levels == {("acme", "DEBUG"): (0, 0), ("acme", "INFO"): (1, 1), ("acme", "WARN"): (0, 0),
                      ("acme", "ERROR"): (1, 1), ("acme", "CRITICAL"): (0, 0)}
    # Then the queue's failure, in one line, and a status scripts notice.
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the queue is unavailable: Redis: ")


def test_a_name_with_control_characters_is_shown_escaped(run, bound):
    with models.database.connection_context():
        models.Project.create(name=HOSTILE)  # as versions before names were checked let add-project store it
    for arguments in (["stats"], ["stats", "1"]):
        result = run(*arguments)
        assert result.exit_code == 0, result.output
        assert result.stdout.count(ESCAPED) == 5  # a line per level
        assert_no_control_characters(result.stdout)
