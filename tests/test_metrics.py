"""GET /metrics: values after a known sequence of requests and writes, on both backends."""
import os
import time
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

import metrics
import models
import spool
import spool_redis
import tasks
from helpers import break_spool, drain_all, post_logs, wait_for
from logflow import create_app
from processes import make_service, post, unique_database_name


def scrape(client):
    """{(sample name, sorted labels): value} of the metrics page."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def test_metrics_after_a_known_sequence(client, key, project, bound):
    project_label = ("project", str(project.id))
    post_logs(client, key, [{"message": "a"}, {"message": "b"}, {"level": "info"}])
    post_logs(client, key, [{"level": "info"}])               # 422
    post_logs(client, "lf_" + "z" * 43, {"message": "x"})     # 401
    before = scrape(client)
    assert before[("logflow_records_accepted_total", (project_label,))] == 2
    assert before[("logflow_records_rejected_total", (project_label, ("reason", "invalid")))] == 2
    assert before[("logflow_requests_refused_total", (("reason", "invalid"),))] == 1
    assert before[("logflow_requests_refused_total", (("reason", "unauthorized"),))] == 1
    assert before[("logflow_queue_records", (("writer", "db"),))] == 2
    assert before[("logflow_queue_oldest_seconds", (("writer", "file"),))] >= 0

    # The file writer fails once (its folder is a file), the database writer succeeds.
    os.makedirs(bound.log_dir)
    blocker = os.path.join(bound.log_dir, str(project.id))
    open(blocker, "w").close()
    drain_all()
    after = scrape(client)
    assert after[("logflow_records_written_total", (("writer", "db"),))] == 2
    assert after[("logflow_write_failures_total", (("writer", "file"),))] == 1
    assert after[("logflow_queue_records", (("writer", "db"),))] == 0
    assert after[("logflow_queue_records", (("writer", "file"),))] == 2
    assert after[("logflow_writer_paused_seconds", (("writer", "file"),))] > 0
    assert after[("logflow_write_seconds_count", (("writer", "db"),))] == 1
    assert after[("logflow_write_seconds_bucket", (("le", "+Inf"), ("writer", "db")))] == 1
    assert ("logflow_records_written_total", (("writer", "file"),)) not in after


def test_records_refused_whole_are_counted_per_project_and_reason(key, project, bound):
    project_label = ("project", str(project.id))
    client = create_app(bound.replace(max_records=3, max_queue=4)).test_client()
    assert post_logs(client, key, [{"message": "m"}] * 4).status_code == 413
    assert post_logs(client, key, [{"message": "m"}] * 3).status_code == 202
    assert post_logs(client, key, [{"message": "m"}, {"message": "m"}, {}]).status_code == 503
    with models.database.connection_context():
        models.Project.update(rate_limit=1).where(models.Project.id == project.id).execute()
    client = create_app(bound.replace(max_records=3)).test_client()
    assert post_logs(client, key, [{"message": "m"}]).status_code == 202  # within the burst of 3
    assert post_logs(client, key, [{"message": "m"}] * 3).status_code == 429
    counted = scrape(client)
    rejected = {labels[1][1]: value for (name, labels), value in counted.items()
                if name == "logflow_records_rejected_total" and labels[0] == project_label}
    assert rejected == {"too_many": 4, "queue_full": 2, "invalid": 1, "rate_limited": 3}
    assert counted[("logflow_records_accepted_total", (project_label,))] == 4


def test_a_body_over_the_limit_is_counted_as_too_large(client, key):
    response = post_logs(client, key, b"[" + b" " * (1024 * 1024) + b"]")
    assert response.status_code == 413 and response.is_json
    assert scrape(client)[("logflow_requests_refused_total", (("reason", "too_large"),))] == 1


def test_refusals_are_answered_while_the_counters_store_is_down(client, key, bound, tmp_path):
    break_spool(bound, tmp_path)
    assert post_logs(client, key, [{"level": "info"}]).status_code == 422
    assert post_logs(client, key, [{"message": "m"}] * 1001).status_code == 413


def test_quarantined_records_are_counted(bound, project, client):
    payload = spool.encode(999, "2026-11-27T12:00:00.000000Z", [
        {"id": "0e3a6a3c-5b7e-4c1b-9e3c-2d6b1a0f9c11", "level": "INFO", "message": "orphan",
         "metadata": {}, "timestamp": "2026-11-27T12:00:00.000000Z"}])
    tasks.runtime.spool.push(payload, ["db"], 1)
    drain_all()
    assert scrape(client)[("logflow_records_quarantined_total", (("writer", "db"),))] == 1
    with models.database.connection_context():
        assert models.Quarantined.select().count() == 1


def test_metrics_answer_503_when_their_store_is_down(client, bound, tmp_path):
    break_spool(bound, tmp_path)
    response = client.get("/metrics")
    assert response.status_code == 503 and response.json["error"].startswith("metrics are unavailable")


def test_consumer_liveness(client, bound):
    assert scrape(client)[("logflow_consumers_alive", ())] == 0
    assert ("logflow_consumer_heartbeat_age_seconds", ()) not in scrape(client)
    tasks.runtime.spool.beat("gone-host:4242", time.time() - 2 * metrics.CONSUMER_ALIVE_SECONDS)
    stale = scrape(client)
    assert stale[("logflow_consumers_alive", ())] == 0
    assert stale[("logflow_consumer_heartbeat_age_seconds", ())] >= 2 * metrics.CONSUMER_ALIVE_SECONDS
    tasks.beat()
    tasks.beat()  # the same process beating again is still one consumer
    tasks.runtime.spool.beat("other-host:7", time.time())
    alive = scrape(client)
    assert alive[("logflow_consumers_alive", ())] == 2
    assert 0 <= alive[("logflow_consumer_heartbeat_age_seconds", ())] < metrics.CONSUMER_ALIVE_SECONDS


def test_the_heartbeat_age_disappears_a_day_after_the_last_consumer_died(client, bound):
    # The last beats of consumers long dead: no consumer beats to forget them.
    tasks.runtime.spool.beat("dead-host:1", time.time() - spool.HEARTBEATS_KEPT_SECONDS - 60)
    tasks.runtime.spool.beat("dead-host:2", time.time() - spool.HEARTBEATS_KEPT_SECONDS - 30)
    assert tasks.runtime.spool.heartbeats() == {}
    page = scrape(client)
    assert page[("logflow_consumers_alive", ())] == 0
    assert ("logflow_consumer_heartbeat_age_seconds", ()) not in page


def test_real_processes_beat_and_share_their_counts(tmp_path, postgres_server, redis_server):
    service = make_service(tmp_path, postgres_server.create_database(unique_database_name("beat")),
                           redis_server.url)
    try:
        service.start_web()
        consumers = [service.start_consumer(), service.start_consumer()]

        def alive():
            for consumer in consumers:
                consumer.check_alive()
            with urllib.request.urlopen(service.base_url + "/metrics", timeout=5) as response:
                page = response.read().decode()
            samples = {sample.name: sample.value for family in text_string_to_metric_families(page)
                       for sample in family.samples}
            return samples["logflow_consumers_alive"] == 2
        wait_for(alive, timeout=60, interval=0.2, message="both consumers' heartbeats")
        names = spool_redis.RedisSpool(redis_server.url, 5).heartbeats()
        assert {name.rsplit(":", 1)[1] for name in names} == {str(consumer.pid) for consumer in consumers}

        # Two gunicorn workers take these requests (a connection each) and two
        # consumers write them: every scrape, whichever worker answers, sees the sums.
        for number in range(20):
            body = orjson.dumps([{"message": "m%d.%d" % (number, i)} for i in range(5)])
            assert post(service.base_url, service.key, body)[0] == 202

        def samples():
            with urllib.request.urlopen(service.base_url + "/metrics", timeout=5) as response:
                page = response.read().decode()
            return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(page) for sample in family.samples}
        written = [("logflow_records_written_total", (("writer", writer),)) for writer in ("db", "file")]
        wait_for(lambda: all(samples().get(name) == 100 for name in written), timeout=60,
                 message="both writers' counts")
        for _ in range(8):
            page = samples()
            assert [page[name] for name in written] == [100, 100]
            assert sum(value for (name, _), value in page.items()
                       if name == "logflow_records_accepted_total") == 100
    finally:
        service.close()
