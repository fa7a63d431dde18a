"""Alerts end to end: real consumers evaluate and notify on PostgreSQL and Redis, and survive a SIGKILL mid-send.

Huey's scheduler enqueues tasks.evaluate_alerts at each minute's start, in
each consumer. Waiting for two of those took this test two minutes, the
longest of the suite; it enqueues the task itself, twice for "the minute"
as two consumers' schedulers would (tick()), and once more after the kill.
test_alerts.py checks that the task is scheduled every minute.
"""
import json
import signal
import subprocess
import sys
import uuid

import pytest

from helpers import wait_for
from processes import ROOT, make_service, post, query, unique_database_name
from receivers import receiver

DELIVERY_SECONDS = 30


def tick(service, times=1):
    """Enqueue the consumers' minute task, as huey's scheduler does at each minute's start, through the shared queue."""
    subprocess.run([sys.executable, "-c", "import config, tasks\n"
                    "tasks.configure(config.load())\n"
                    "for _ in range(%d):\n    tasks.evaluate_alerts()" % times],
                   cwd=ROOT, env=service.env, check=True, capture_output=True, timeout=60)


@pytest.fixture
def service(tmp_path, postgres_server, redis_server):
    svc = make_service(tmp_path, postgres_server.create_database(unique_database_name("alerts")), redis_server.url,
                       LOGFLOW_ALLOW_PRIVATE_WEBHOOKS="1", # Long enough that the kill lands while the first attempt still waits for its answer.
                       LOGFLOW_NOTIFY_TIMEOUT_SECONDS="5")
    yield svc
    svc.close()


def test_two_consumers_evaluate_once_and_a_notification_outlives_the_consumer_sending_it(service):
    with receiver() as hook:
        hook.plan = ["hang"]  # the first attempt never gets an answer: its consumer is killed meanwhile
        added = subprocess.run([sys.executable, "manage.py", "alert", "add", "e2e", "errors", "--query",
                                "level=ERROR", "--threshold", "1", "--window", "5", "--webhook", hook.url],
                               cwd=ROOT, env=service.env, capture_output=True, text=True, check=True)
        secret = added.stdout.strip()
        service.start_web()
        first, second = service.start_consumer(), service.start_consumer()
        record_id = str(uuid.uuid4())
        assert post(service.base_url, service.key, json.dumps(
            {"id": record_id, "message": "disk full", "level": "error"}).encode())[0] == 202
        wait_for(lambda: service.db_ids() >= {record_id}, timeout=30, message="the log stored")

        # A new rule is first due at the next whole minute: as if that minute had come.
        query(service.db_url, "UPDATE alert_rules SET due_at = now() AT TIME ZONE 'UTC' RETURNING id")
        tick(service, times=2)
        [(headers, body)] = hook.wait_for(1, timeout=DELIVERY_SECONDS)
        # Both ticks ran that minute's evaluation; one of them took the rule.
        assert query(service.db_url, "SELECT count(*) FROM alert_evaluations")[0][0] == 1
        for consumer in (first, second):  # one of them is waiting on the receiver: both die
            consumer.popen.kill()
            assert consumer.popen.wait(timeout=10) == -signal.SIGKILL

        # Another consumer finds the notification at a minute's tick once its lease has run out, and sends it again.
        third = service.start_consumer()
        wait_for(lambda: query(service.db_url, "SELECT count(*) FROM notifications WHERE leased_until < now()"
                               " AT TIME ZONE 'UTC'")[0][0] == 1, timeout=60, interval=0.5, message="the lease run out")
        query(service.db_url, "UPDATE alert_rules SET due_at = now() AT TIME ZONE 'UTC' RETURNING id")  # the next minute
        tick(service)
        [_, (headers_again, body_again)] = hook.wait_for(2, timeout=DELIVERY_SECONDS)
        wait_for(lambda: query(service.db_url, "SELECT count(*) FROM notifications WHERE sent_at IS NOT NULL"
                               )[0][0] == 1, timeout=10, message="the notification marked sent")
        third.check_alive()
    delivery = headers["x-logflow-delivery"]
    assert headers_again["x-logflow-delivery"] == delivery and body_again == body
    sent = json.loads(body)
    assert (sent["id"], sent["state"], sent["count"]) == (delivery, "firing", 1)
    assert sent["samples"][0]["id"] == record_id
    assert secret.startswith("whsec_") and secret not in third.text() + first.text() + second.text()
    assert query(service.db_url, "SELECT attempts, last_error FROM notifications") == [(2, None)]
    # The next minute was evaluated once too, still firing: nothing more to send.
    assert query(service.db_url, "SELECT count(*), max(count) FROM alert_evaluations") == [(2, 1)]
    assert query(service.db_url, "SELECT count(*) FROM notifications")[0][0] == 1
