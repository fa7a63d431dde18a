"""Backpressure and rate limits: 503 past LOGFLOW_MAX_QUEUE, 429 past a project's rate, nothing half-accepted."""
import pytest

import models
import tasks
from helpers import drain_all, post_logs, stored_logs, wait_for
from logflow import create_app


def batch(count):
    return [{"message": "m%d" % n} for n in range(count)]


def test_a_full_queue_refuses_with_503_and_recovers_once_drained(bound, key):
    client = create_app(bound.replace(max_queue=5)).test_client()
    assert post_logs(client, key, batch(3)).status_code == 202
    assert tasks.runtime.spool.queued_records("db") == 3
    response = post_logs(client, key, batch(3))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json["error"] == "the queue is full; nothing was accepted, retry later"
    assert tasks.runtime.spool.queued_records("db") == tasks.runtime.spool.queued_records("file") == 3
    # Claimed but not written (the writer is down): the records still count.
    claimed = tasks.runtime.spool.claim("db", 1 << 20)
    assert post_logs(client, key, batch(3)).status_code == 503
    tasks.write_batch("db", claimed)
    tasks.runtime.spool.ack("db", claimed.id)  # a second ack (a redelivered batch) uncounts nothing
    assert tasks.runtime.spool.queued_records("db") == 0
    drain_all()
    assert tasks.runtime.spool.queued_records("db") == 0
    assert post_logs(client, key, batch(5)).status_code == 202
    drain_all()
    assert len(stored_logs()) == 8


def test_a_project_past_its_rate_gets_429_then_recovers(bound, project, key):
    with models.database.connection_context():
        models.Project.update(rate_limit=20).execute()
    client = create_app(bound.replace(rate_burst=20)).test_client()
    assert post_logs(client, key, batch(15)).status_code == 202
    response = post_logs(client, key, batch(10))
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert "20 records per second" in response.json["error"]
    # Tokens come back at 20 per second.
    wait_for(lambda: post_logs(client, key, batch(10)).status_code == 202, timeout=10,
             interval=0.1, message="tokens to refill")
    drain_all()
    assert len(stored_logs()) == 25


def test_the_default_rate_applies_unless_a_project_opts_out(bound, project, key):
    client = create_app(bound.replace(rate_limit=5, rate_burst=5)).test_client()
    assert post_logs(client, key, batch(5)).status_code == 202
    assert post_logs(client, key, batch(1)).status_code == 429
    with models.database.connection_context():
        models.Project.update(rate_limit=0).execute()
    assert post_logs(client, key, batch(50)).status_code == 202


def test_web_processes_share_a_projects_bucket_through_redis(bound, project, key):
    if not bound.redis_url:
        pytest.skip("dev mode keeps buckets per process, as documented")
    settings = bound.replace(rate_limit=10, rate_burst=10)
    first, second = create_app(settings).test_client(), create_app(settings).test_client()
    assert post_logs(first, key, batch(6)).status_code == 202
    assert post_logs(second, key, batch(6)).status_code == 429
