"""GET /logs/live on both backends: what the database writer stored after a cursor, through the filters every read applies."""
import uuid

import pytest

import logflow
import models
import query
import spool
import tasks
from helpers import drain_all, post_logs
from test_query_api import get, log_id


def send(client, key, body):
    """POST records, without writing them yet."""
    response = post_logs(client, key, body)
    assert response.status_code == 202, response.json


def live(client, read_key, cursor=None, params=()):
    """One poll; returns its JSON."""
    given = list(params) + ([("cursor", cursor)] if cursor is not None else [])
    response = get(client, read_key, "/logs/live", given)
    assert response.status_code == 200, response.json
    return response.json


def follow(client, read_key, cursor, params=()):
    """Poll until nothing more waits; returns (messages in the order shown, the last cursor)."""
    shown = []
    while True:
        answer = live(client, read_key, cursor, params)
        assert not answer["gap"]
        shown.extend(log["message"] for log in answer["logs"])
        cursor = answer["cursor"]
        if not answer["more"]:
            return shown, cursor


def test_a_poll_gives_what_was_stored_after_its_cursor_once(client, key, read_key):
    send(client, key, [{"message": "before", "id": log_id(1)}])
    drain_all()
    start = live(client, read_key)
    assert start["logs"] == [] and start["more"] is False
    send(client, key, [{"message": "first", "id": log_id(2)}, {"message": "second", "id": log_id(3)}])
    assert follow(client, read_key, start["cursor"])[0] == []  # queued, not yet stored
    drain_all()
    answer = live(client, read_key, start["cursor"])
    assert [log["message"] for log in answer["logs"]] == ["first", "second"]
    assert answer["logs"][0]["id"] == log_id(2)
    assert live(client, read_key, answer["cursor"])["logs"] == []


def test_filters_apply_to_live_logs_as_to_the_list(client, key, read_key):
    cursor = live(client, read_key)["cursor"]
    body = [{"message": "checkout failed", "level": "ERROR", "metadata": {"user": "alice"}},
            {"message": "checkout failed", "level": "INFO", "metadata": {"user": "alice"}},
            {"message": "checkout failed", "level": "ERROR", "metadata": {"user": "bob"}},
            {"message": "login", "level": "ERROR", "metadata": {"user": "alice"}}]
    send(client, key, body)
    drain_all()
    params = [("level", "ERROR"), ("q", "CHECKOUT"), ("meta.user", "alice")]
    shown = live(client, read_key, cursor, params)["logs"]
    listed = get(client, read_key, "/logs", params).json["logs"]
    assert [(log["level"], log["metadata"]) for log in shown] == [("ERROR", {"user": "alice"})]
    assert [log["id"] for log in shown] == [log["id"] for log in listed]
    excluded = live(client, read_key, cursor, [("meta.user!", "alice")])["logs"]
    assert [log["metadata"] for log in excluded] == [{"user": "bob"}]


def test_a_log_timestamped_long_ago_is_shown_when_it_is_stored(client, key, read_key):
    cursor = live(client, read_key)["cursor"]
    send(client, key, [{"message": "late", "timestamp": "2020-01-01T00:00:00Z"}])
    drain_all()
    assert follow(client, read_key, cursor)[0] == ["late"]


def test_a_level_filter_reads_only_the_rows_of_its_levels(client, key, read_key):
    send(client, key, [{"message": "an error", "level": "ERROR", "id": log_id(20)}])
    drain_all()
    cursor = live(client, read_key)["cursor"]
    with models.database.connection_context():
        project_id = models.Log.get(models.Log.message == "an error").project_id
    # The feed names each id's level. An entry that (wrongly) says INFO for the error: a viewer of
    # errors does not look it up, so does not see it; a viewer of every level does.
    tasks.runtime.spool.publish({project_id: ["I" + log_id(20)]})
    assert live(client, read_key, cursor, [("level", "ERROR")])["logs"] == []
    assert [log["message"] for log in live(client, read_key, cursor)["logs"]] == ["an error"]
    # An entry without a level (a bare id) is looked up and filtered by its row.
    tasks.runtime.spool.publish({project_id: [log_id(20)]})
    assert [log["message"] for log in live(client, read_key, cursor, [("level", "ERROR")])["logs"]] == ["an error"]


def test_a_redelivered_batch_is_shown_once(client, key, read_key):
    cursor = live(client, read_key)["cursor"]
    send(client, key, [{"message": "once", "id": log_id(7)}])
    batch = tasks.runtime.spool.claim("db", tasks.runtime.settings.batch_bytes)
    items = spool.decode(batch.payloads)
    # A consumer that died after publishing, before acknowledging: the batch is written again.
    tasks.runtime.writers["db"].write(items)
    tasks.runtime.spool.publish(tasks.written_ids(items))
    tasks.write_batch("db", batch)
    drain_all()
    assert follow(client, read_key, cursor)[0] == ["once"]


def test_large_logs_are_read_a_part_at_a_time_and_none_is_skipped_or_repeated(client, key, read_key, bound):
    cursor = live(client, read_key)["cursor"]
    big = "x" * 60_000
    messages = ["%d %s" % (number, big) for number in range(90)]  # 5.4 MB, past a page's 4 MiB
    for start in range(0, 90, 10):
        send(client, key, [{"message": text} for text in messages[start:start + 10]])
    drain_all()
    answers, shown = [], []
    while True:
        answer = live(client, read_key, cursor)
        answers.append(answer)
        shown.extend(log["message"] for log in answer["logs"])
        cursor = answer["cursor"]
        if not answer["more"]:
            break
    assert shown == messages
    assert len(answers) >= 2 and all(len(answer["logs"]) * 60_000 <= bound.max_page_bytes for answer in answers)
    # A cursor that stopped inside a batch says so: the ids of its entry already read.
    assert any(not answer["cursor"].endswith(":0") for answer in answers[:-1])


def test_a_cursor_older_than_the_feed_says_there_is_a_gap(client, key, read_key, monkeypatch):
    cursor = live(client, read_key)["cursor"]
    # Many batches, then a trim that drops them all but the newest.
    for number in range(120):
        send(client, key, [{"message": "m%d" % number}])
        drain_all()
    assert live(client, read_key, cursor)["gap"] is False
    monkeypatch.setattr(spool, "FEED_SECONDS", -60)
    send(client, key, [{"message": "after the trim"}])
    drain_all()
    answer = live(client, read_key, cursor)
    assert answer["gap"] is True
    # From the feed's end again, no gap.
    fresh = live(client, read_key)["cursor"]
    assert live(client, read_key, fresh)["gap"] is False


def test_the_feed_keeps_at_most_its_ids_and_says_when_it_dropped_some(client, key, read_key, monkeypatch):
    monkeypatch.setattr(spool, "FEED_MAX_IDS", 25)
    cursor = live(client, read_key)["cursor"]
    for start in range(0, 30, 10):
        send(client, key, [{"message": "m%d" % number} for number in range(start, start + 10)])
        drain_all()
    answer = live(client, read_key, cursor)
    # The first batch went (30 ids > 25); the answer holds what the feed kept, and says the rest is missing.
    assert answer["gap"] is True
    assert [log["message"] for log in answer["logs"]] == ["m%d" % number for number in range(10, 30)]
    assert live(client, read_key, answer["cursor"])["gap"] is False
    fresh = live(client, read_key)["cursor"]
    send(client, key, [{"message": "m%d" % number} for number in range(30, 70)])  # one batch past the bound
    drain_all()
    assert follow(client, read_key, fresh)[0] == ["m%d" % number for number in range(30, 70)]


def test_a_poll_while_the_process_answers_another_is_asked_to_come_back_in_a_second(client, key, read_key):
    cursor = live(client, read_key)["cursor"]
    send(client, key, [{"message": "waited"}])
    drain_all()
    assert logflow.live_polls.acquire(blocking=False)  # another viewer's poll, under way
    try:
        busy = get(client, read_key, "/logs/live", [("cursor", cursor)])
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert live(client, read_key)["logs"] == []  # asking for the cursor of now needs no turn
    finally:
        logflow.live_polls.release()
    assert follow(client, read_key, cursor)[0] == ["waited"]


def test_a_batch_dropped_while_a_cursor_stood_inside_it_is_a_gap(client, key, read_key, monkeypatch):
    cursor = live(client, read_key)["cursor"]
    big = "y" * 60_000
    # 4.2 MB in batches of 600 kB: a poll of 4 MiB stops inside the last of them.
    for start in range(0, 70, 10):
        send(client, key, [{"message": "%d %s" % (number, big)} for number in range(start, start + 10)])
    drain_all()
    inside = live(client, read_key, cursor)
    while inside["cursor"].endswith(":0"):
        assert inside["more"] is True
        inside = live(client, read_key, inside["cursor"])
    monkeypatch.setattr(spool, "FEED_MAX_IDS", 5)
    send(client, key, [{"message": "next"}])  # more ids kept than 5: all but this batch go
    drain_all()
    assert live(client, read_key, inside["cursor"])["gap"] is True


def test_another_projects_logs_never_appear(client, key, read_key):
    cursor = live(client, read_key)["cursor"]
    with models.database.connection_context():
        other = models.ApiKey.issue(models.Project.create(name="other"))
    send(client, other, [{"message": "not yours"}])
    send(client, key, [{"message": "yours"}])
    drain_all()
    assert follow(client, read_key, cursor)[0] == ["yours"]


@pytest.mark.parametrize("cursor", ["", "abc", "1-2-3:0", "12:x", "1:" + "9" * 10, "%s:0" % uuid.uuid4(),
                                    "9" * 20 + ":0", "9" * 20 + "-0:0", "1-" + "9" * 20 + ":0"])
def test_a_malformed_cursor_is_a_400(client, read_key, cursor):
    # The feed's own positions differ: Redis stream ids, SQLite row numbers. Each backend refuses the other's.
    response = get(client, read_key, "/logs/live", [("cursor", cursor)])
    assert response.status_code == 400
    assert "cursor" in response.json["error"]


def test_the_other_backends_cursor_is_a_400_or_reads_from_its_position(client, read_key, bound):
    other = "12:0" if bound.redis_url else "1796504445692-0:0"
    response = get(client, read_key, "/logs/live", [("cursor", other)])
    assert response.status_code == (200 if bound.redis_url else 400)


def test_page_parameters_are_refused(client, read_key):
    response = get(client, read_key, "/logs/live", [("limit", "5")])
    assert response.status_code == 400


def test_live_needs_a_read_key(client, key):
    assert client.get("/logs/live").status_code == 401
    assert client.get("/logs/live", headers={"X-API-Key": key}).status_code == 403
    assert query.MAX_LIVE_IDS >= 1000
