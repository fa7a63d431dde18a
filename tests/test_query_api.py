"""What the viewer reads, through the public API on both backends: exclusion, histograms, a log's context."""
import datetime
import random
import uuid

import pytest

import models
import query
from helpers import drain_all, post_logs
from logflow import create_app
from models import ApiKey, Project


def log_id(number):
    """A client-chosen id that sorts by number, so ties on the timestamp have a known order."""
    return str(uuid.UUID(int=(0x7000 << 64) + number))


def store(client, key, body):
    """Send records with POST /logs and write them as a consumer would."""
    response = post_logs(client, key, body)
    assert response.status_code == 202, response.json
    assert response.json["accepted"] == len(body)
    drain_all()


def get(client, read_key, path, params=()):
    """GET path with the read key and these (name, value) parameters, repeated names allowed."""
    return client.get(path, query_string=list(params), headers={"X-API-Key": read_key})


def messages(logs):
    return [log["message"] for log in logs]


# Metadata that an exclusion keeps or drops: equal strings and numbers, other types, missing paths.
PEOPLE = [
    ("alice", {"user": "alice", "http": {"status": 500}}),
    ("bob", {"user": "bob", "http": {"status": "404"}}),
    ("carol-number", {"user": 42, "http": {"status": 200}}),
    ("no-user", {"http": "not an object"}),
    ("null-user", {"user": None}),
    ("nested-user", {"user": {"name": "alice"}}),
    ("empty", {}),
]


@pytest.fixture
def people(client, key):
    store(client, key, [{"id": log_id(number), "message": name, "metadata": metadata,
                         "timestamp": "2026-11-27T10:00:%02dZ" % number, "level": "ERROR" if number % 2 else "INFO"}
                        for number, (name, metadata) in enumerate(PEOPLE)])


def listed(client, read_key, params):
    response = get(client, read_key, "/logs", list(params) + [("order", "asc")])
    assert response.status_code == 200, response.json
    return messages(response.json["logs"])


def test_an_exclusion_keeps_logs_without_the_path_and_drops_equal_values(client, read_key, people):
    everyone = [name for name, _ in PEOPLE]
    assert listed(client, read_key, [("meta.user!", "alice")]) == [name for name in everyone if name != "alice"]
    assert listed(client, read_key, [("meta.user!", "alice"), ("meta.user!", "bob")]) == [
        name for name in everyone if name not in ("alice", "bob")]
    # A number matches the equal number and the equal string, as meta.<path>= does.
    assert listed(client, read_key, [("meta.user!", "42")]) == [name for name in everyone if name != "carol-number"]
    # The parent of the path is a string or missing: kept.
    assert listed(client, read_key, [("meta.http.status!", "500")]) == [name for name in everyone if name != "alice"]
    assert listed(client, read_key, [("meta.http.status!", "404"), ("meta.http.status!", "200")]) == [
        "alice", "no-user", "null-user", "nested-user", "empty"]
    # Inclusion and exclusion together, and with the other filters.
    assert listed(client, read_key, [("meta.http.status", "500"), ("meta.http.status", "404"),
                                     ("meta.user!", "bob")]) == ["alice"]
    assert listed(client, read_key, [("meta.user!", "alice"), ("level", "ERROR")]) == ["bob", "no-user", "nested-user"]


def test_metadata_filter_bounds_count_exclusions_too(client, read_key, people):
    twenty = [("meta.k%d" % n, "v") for n in range(10)] + [("meta.x%d!" % n, "v") for n in range(10)]
    assert get(client, read_key, "/logs", twenty).status_code == 200
    for path in ("/logs", "/logs/histogram", "/logs/%s/context" % log_id(0)):
        too_many = get(client, read_key, path, twenty + [("meta.one_more!", "v")])
        assert too_many.status_code == 400 and "at most 20" in too_many.json["error"], path
        values = get(client, read_key, path, [("meta.user!", str(n)) for n in range(101)])
        assert values.status_code == 400 and "at most 100" in values.json["error"], path
        for name in ("meta.!", "meta.user.!", "meta.a..b!"):
            assert get(client, read_key, path, [(name, "x")]).status_code == 400, (path, name)


def bars(answer):
    """{bucket start: {level: count}} of the buckets that counted something."""
    return {bucket["start"]: {level: n for level, n in bucket["counts"].items() if n}
            for bucket in answer["buckets"] if bucket["total"]}


def histogram(client, read_key, params):
    response = get(client, read_key, "/logs/histogram", params)
    assert response.status_code == 200, response.json
    answer = response.json
    assert [set(bucket["counts"]) for bucket in answer["buckets"]] == [
        {"DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"}] * len(answer["buckets"])
    assert answer["total"] == sum(bucket["total"] for bucket in answer["buckets"])
    return answer


def test_a_histogram_counts_per_level_in_epoch_aligned_buckets_with_exact_edges(client, key, read_key):
    stamps = [("09:59:59.999999", "INFO"),   # before since: not counted
              ("10:00:00.000000", "INFO"), ("10:00:29.999999", "ERROR"), ("10:00:29.999999", "ERROR"),
              ("10:00:30.000000", "WARN"),   # the second bucket's first microsecond
              ("10:30:00.5", "DEBUG"), ("10:59:59.999999", "CRITICAL"),
              ("11:00:00.000000", "INFO")]   # until is exclusive
    store(client, key, [{"message": "m%d" % n, "level": level, "timestamp": "2026-11-27T%sZ" % stamp}
                        for n, (stamp, level) in enumerate(stamps)])
    answer = histogram(client, read_key, [("since", "2026-11-27T10:00:00Z"), ("until", "2026-11-27T11:00:00Z")])
    # An hour in buckets of 30 s is 120 bars; 15 s would be 240.
    assert answer["interval_ms"] == 30000 and len(answer["buckets"]) == 120
    assert (answer["since"], answer["until"]) == ("2026-11-27T10:00:00.000000Z", "2026-11-27T11:00:00.000000Z")
    starts = [bucket["start"] for bucket in answer["buckets"]]
    assert starts[:3] == ["2026-11-27T10:00:00.000000Z", "2026-11-27T10:00:30.000000Z", "2026-11-27T10:01:00.000000Z"]
    assert starts[-1] == "2026-11-27T10:59:30.000000Z"
    assert bars(answer) == {"2026-11-27T10:00:00.000000Z": {"INFO": 1, "ERROR": 2},
                            "2026-11-27T10:00:30.000000Z": {"WARN": 1},
                            "2026-11-27T10:30:00.000000Z": {"DEBUG": 1},
                            "2026-11-27T10:59:30.000000Z": {"CRITICAL": 1}}
    assert answer["total"] == 6
    # Millisecond buckets are cut at the exact microsecond on both backends.
    store(client, key, [{"message": "ms", "level": "INFO", "timestamp": "2026-11-27T12:00:00.%06dZ" % micros}
                        for micros in (4999, 5000, 5001, 99999)])
    fine = histogram(client, read_key, [("since", "2026-11-27T12:00:00Z"), ("until", "2026-11-27T12:00:00.1Z")])
    assert fine["interval_ms"] == 1 and len(fine["buckets"]) == 100
    assert [bucket["total"] for bucket in fine["buckets"]] == [0] * 4 + [1, 2] + [0] * 93 + [1]


def test_a_range_off_the_grid_has_partial_first_and_last_buckets_that_count_only_within_it(client, key, read_key):
    store(client, key, [{"message": stamp, "level": "INFO", "timestamp": "2026-11-27T%sZ" % stamp}
                        for stamp in ("10:00:05", "10:00:07", "10:15:06.999999", "10:15:07")])
    answer = histogram(client, read_key, [("since", "2026-11-27T10:00:07Z"), ("until", "2026-11-27T10:15:07Z")])
    width = datetime.timedelta(milliseconds=answer["interval_ms"])
    starts = [datetime.datetime.fromisoformat(bucket["start"][:-1]) for bucket in answer["buckets"]]
    since, until = datetime.datetime(2026, 11, 27, 10, 0, 7), datetime.datetime(2026, 11, 27, 10, 15, 7)
    assert starts[0] <= since < starts[0] + width and starts[-1] < until <= starts[-1] + width
    assert all(later - earlier == width for earlier, later in zip(starts, starts[1:]))
    assert all((start - datetime.datetime(1970, 1, 1)) % width == datetime.timedelta(0) for start in starts)
    assert 60 <= len(starts) <= 120
    # 10:00:05 shares the first bucket but is before since; 10:15:07 is at until.
    assert answer["total"] == 2 and answer["buckets"][0]["total"] == 1 and answer["buckets"][-1]["total"] == 1


def test_every_range_gets_60_to_120_buckets():
    rng = random.Random(13)
    start = datetime.datetime(2026, 11, 27)
    spans = [datetime.timedelta(milliseconds=60)] + [datetime.timedelta(seconds=10 ** rng.uniform(-1, 9.5))
                                                     for _ in range(3000)]
    for span in spans:
        since = start + datetime.timedelta(microseconds=rng.randrange(10 ** 12))
        width = query.bucket_width(since, since + span) * 1000
        count = -(-query.micros(since + span) // width) - query.micros(since) // width
        assert 60 <= count <= 120, (since, span, width)


def test_a_histogram_defaults_to_the_last_day_and_applies_every_filter(client, key, read_key):
    now = models.utcnow()
    recent = [{"message": "recent %s" % level, "level": level, "timestamp": (now - datetime.timedelta(hours=1)).isoformat() + "Z",
               "metadata": {"user": user}} for level, user in (("INFO", "alice"), ("ERROR", "bob"), ("ERROR", None))]
    old = {"message": "two days ago", "level": "ERROR", "timestamp": (now - datetime.timedelta(days=2)).isoformat() + "Z"}
    store(client, key, recent + [old])
    answer = histogram(client, read_key, [])
    span = datetime.datetime.fromisoformat(answer["until"][:-1]) - datetime.datetime.fromisoformat(answer["since"][:-1])
    assert span == datetime.timedelta(days=1) and answer["interval_ms"] == 15 * 60 * 1000
    assert answer["total"] == 3 and len(answer["buckets"]) in (96, 97)
    assert histogram(client, read_key, [("level", "ERROR")])["total"] == 2
    assert histogram(client, read_key, [("min_level", "WARN"), ("meta.user!", "bob")])["total"] == 1
    assert histogram(client, read_key, [("meta.user", "alice")])["total"] == 1
    assert histogram(client, read_key, [("q", "RECENT info")])["total"] == 1
    week = histogram(client, read_key, [("since", (now - datetime.timedelta(days=7)).isoformat())])
    assert week["total"] == 4 and week["interval_ms"] == 2 * 3600 * 1000


def test_a_histogram_over_years_has_buckets_of_whole_weeks(client, key, read_key):
    store(client, key, [{"message": "m", "timestamp": stamp} for stamp in
                        ("1969-12-31T23:59:59.999999Z", "2020-06-01T00:00:00Z", "2026-11-27T10:00:00Z")])
    answer = histogram(client, read_key, [("since", "1960-01-01"), ("until", "2030-01-01")])
    # 70 years (25,567 days) in at most 120 buckets: 7 days doubled five times, 224 days.
    assert answer["interval_ms"] == 224 * 86400000 and 60 <= len(answer["buckets"]) <= 120
    width = datetime.timedelta(milliseconds=answer["interval_ms"])
    counted = {bucket["start"]: bucket["total"] for bucket in answer["buckets"] if bucket["total"]}
    assert len(counted) == 3 and answer["total"] == 3
    for stamp in ("1969-12-31T23:59:59.999999", "2020-06-01T00:00:00", "2026-11-27T10:00:00"):
        [start] = [start for start in counted
                   if datetime.datetime.fromisoformat(start[:-1]) <= datetime.datetime.fromisoformat(stamp)
                   < datetime.datetime.fromisoformat(start[:-1]) + width]


@pytest.mark.parametrize("params, words", [
    ([("since", "2026-11-27T11:00:00Z"), ("until", "2026-11-27T10:00:00Z")], "before until"),
    ([("since", "2026-11-27T10:00:00Z"), ("until", "2026-11-27T10:00:00Z")], "before until"),
    ([("since", "yesterday")], "since"),
    ([("limit", "10")], "limit"),
    ([("order", "asc")], "order"),
    ([("cursor", "x")], "cursor"),
    ([("buckets", "10")], "unknown parameter"),
    # Weeks start on the Thursdays of 1970, so the first bucket of this range would start before the year 1.
    ([("since", "0001-01-01T00:00:00Z"), ("until", "0003-01-01T00:00:00Z")], "years 1 and 9999"),
    ([("until", "0001-01-01T01:00:00Z")], "years 1 and 9999"),
])
def test_histogram_parameters_out_of_bounds_are_400(client, read_key, params, words):
    response = get(client, read_key, "/logs/histogram", params)
    assert response.status_code == 400 and words in response.json["error"], response.json


# Ten logs, 0..9, a second apart but 4 and 5 sharing a timestamp (ordered by id); odd ones ERROR.
@pytest.fixture
def numbered(client, key):
    seconds = [0, 1, 2, 3, 4, 4, 6, 7, 8, 9]
    store(client, key, [{"id": log_id(n), "message": "log %d" % n, "level": "ERROR" if n % 2 else "INFO",
                         "timestamp": "2026-11-27T10:00:%02dZ" % second, "metadata": {"n": n}}
                        for n, second in reversed(list(enumerate(seconds)))])


def context(client, read_key, number, params=()):
    response = get(client, read_key, "/logs/%s/context" % log_id(number), params)
    assert response.status_code == 200, response.json
    answer = response.json
    assert answer["log"]["id"] == log_id(number)
    return answer


def test_context_shows_the_neighbours_in_timestamp_then_id_order_with_cursors_to_go_on(client, read_key, numbered):
    answer = context(client, read_key, 5, [("before", "3"), ("after", "2")])
    assert messages(answer["before"]) == ["log 2", "log 3", "log 4"] and messages(answer["after"]) == ["log 6", "log 7"]
    older = get(client, read_key, "/logs", [("cursor", answer["before_cursor"])]).json
    assert messages(older["logs"]) == ["log 1", "log 0"] and older["next_cursor"] is None
    newer = get(client, read_key, "/logs", [("cursor", answer["after_cursor"]), ("order", "asc")]).json
    assert messages(newer["logs"]) == ["log 8", "log 9"]
    # The default is 20 a side; at the project's first and last logs one side is empty and has no cursor.
    first = context(client, read_key, 0)
    assert first["before"] == [] and first["before_cursor"] is None
    assert messages(first["after"]) == ["log %d" % n for n in range(1, 10)] and first["after_cursor"] is None
    last = context(client, read_key, 9, [("after", "0"), ("before", "1")])
    assert last["after"] == [] and last["after_cursor"] is None and messages(last["before"]) == ["log 8"]
    # None asked for, but more there: the cursor starts at the log itself.
    none = context(client, read_key, 4, [("before", "0"), ("after", "0")])
    assert none["before"] == none["after"] == []
    assert messages(get(client, read_key, "/logs", [("cursor", none["before_cursor"]), ("limit", "1")]).json["logs"]) == [
        "log 3"]


def test_context_applies_the_filters_to_the_neighbours_but_always_shows_the_log(client, read_key, numbered):
    answer = context(client, read_key, 4, [("level", "ERROR"), ("before", "1"), ("after", "2")])
    assert answer["log"]["message"] == "log 4" and answer["log"]["level"] == "INFO"
    assert messages(answer["before"]) == ["log 3"] and messages(answer["after"]) == ["log 5", "log 7"]
    excluded = context(client, read_key, 4, [("meta.n!", "3"), ("meta.n!", "5"), ("before", "1"), ("after", "1")])
    assert messages(excluded["before"]) == ["log 2"] and messages(excluded["after"]) == ["log 6"]
    bounded = context(client, read_key, 4, [("since", "2026-11-27T10:00:03Z"), ("until", "2026-11-27T10:00:07Z")])
    assert messages(bounded["before"]) == ["log 3"] and messages(bounded["after"]) == ["log 5", "log 6"]
    assert bounded["before_cursor"] is None and bounded["after_cursor"] is None


def test_context_of_another_projects_log_is_the_404_of_an_unknown_one(client, read_key, numbered, bound):
    with models.database.connection_context():
        other = Project.create(name="other")
        other_key, other_read = ApiKey.issue(other), ApiKey.issue(other, scope="read")
    store(client, other_key, [{"id": log_id(100), "message": "theirs"}])
    theirs = get(client, read_key, "/logs/%s/context" % log_id(100))
    unknown = get(client, read_key, "/logs/%s/context" % log_id(101))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json["error"].replace(log_id(100), "") == unknown.json["error"].replace(log_id(101), "")
    # Their own key sees it, with none of our logs beside it.
    mine = get(client, other_read, "/logs/%s/context" % log_id(100)).json
    assert mine["log"]["message"] == "theirs" and mine["before"] == mine["after"] == []
    assert get(client, read_key, "/logs/not-a-uuid/context").status_code == 400


@pytest.mark.parametrize("params, words", [
    ([("before", "101")], "before must be a whole number from 0 to 100"),
    ([("after", "-1")], "after must be"),
    ([("after", "²")], "after must be"),
    ([("before", "1"), ("before", "2")], "more than once"),
    ([("limit", "5")], "limit"),
    ([("cursor", "x")], "cursor"),
    ([("level", "LOUD")], "level"),
])
def test_context_parameters_out_of_bounds_are_400(client, read_key, numbered, params, words):
    response = get(client, read_key, "/logs/%s/context" % log_id(3), params)
    assert response.status_code == 400 and words in response.json["error"], response.json


def test_context_is_bounded_in_bytes_like_a_page(bound, key, read_key):
    client = create_app(bound.replace(max_page_bytes=5000)).test_client()
    store(client, key, [{"id": log_id(n), "message": "%d" % n + "x" * 999, "timestamp": "2026-11-27T10:00:%02dZ" % n}
                        for n in range(9)])
    answer = context(client, read_key, 4)
    # 2,500 bytes a side: two logs of about 1,200 (message plus what query.LOG_BYTES counts).
    assert [log["message"][0] for log in answer["before"]] == ["2", "3"]
    assert [log["message"][0] for log in answer["after"]] == ["5", "6"]
    rest = get(client, read_key, "/logs", [("cursor", answer["after_cursor"]), ("order", "asc")]).json
    assert [log["message"][0] for log in rest["logs"]] == ["7", "8"]
