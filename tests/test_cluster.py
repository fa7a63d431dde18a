"""The spool in shards on a real 3-primary Redis Cluster: slots, ingestion, redelivery, backpressure, rate limits.

Also on one Redis: shard 0 keeps the key names of versions before shards, so
their queued records are drained after an upgrade.
"""
import collections
import re
import signal
import time

import psycopg2
import pytest

import spool as spools
import redis_url
import tasks
from conftest import base_settings
from helpers import drain_all, post_logs, stored_logs, wait_for
from logflow import create_app
from processes import (LEASE_SECONDS, Sender, assert_stored_once, free_port, make_service, tally,
                       unique_database_name)
from test_metrics import scrape

SHARDS = 4


@pytest.fixture(params=["redis", "cluster, 4 shards"])
def settings(request, tmp_path):
    """PostgreSQL beside one Redis (one shard), or beside the Redis Cluster with SHARDS shards."""
    cluster = request.param.startswith("cluster")
    redis_url = request.getfixturevalue("redis_cluster" if cluster else "redis_server").url
    return base_settings(tmp_path).replace(database_url=request.getfixturevalue("postgres_server").url,
                                           redis_url=redis_url, spool_shards=SHARDS if cluster else 1)


def keys_of(client):
    """Every key in the store (each primary of a cluster), as text."""
    return sorted(key.decode() for key in client.scan_iter("*"))


@pytest.mark.parametrize("settings", ["cluster, 4 shards"], indirect=True)
def test_each_shard_keeps_its_keys_in_one_slot_and_the_shards_spread_over_the_nodes(bound):
    spool = tasks.runtime.spool
    limit = spools.Limit("project:1", 1000, 1000)
    for number in range(4 * SHARDS):
        spool.push(b'{"count":1} %d' % number, ["db", "file"], 1, limit, [("records_accepted", 1)])
    for shard in range(SHARDS):  # a batch leased, one failed: every kind of key exists
        spool.claim("db", 30, shard)
        spool.fail("file", spool.claim("file", 30, shard).id, 30, shard)
        spool.reserve_wakeup("file", shard)
    spool.publish({7: ["iabc"]})
    client = spool.client
    by_shard = collections.defaultdict(set)
    for key in keys_of(client):
        tag = re.match(r"\{logflow:(\d+)\}:", key)
        if tag:
            by_shard[int(tag.group(1))].add(key)
    assert sorted(by_shard) == list(range(SHARDS))
    nodes = set()
    for shard, keys in by_shard.items():
        # Queues, leases, batches, counts, flags, the project's bucket, the counters.
        assert {re.sub(r"batch:\w+", "batch:<id>", key.split("}:", 1)[1]) for key in keys} == {
            "db:queue", "db:queued", "db:queued:batches", "db:leases", "db:batch:<id>", "db:scheduled",
            "file:queue", "file:queued", "file:queued:batches", "file:leases", "file:batch:<id>", "file:attempts",
            "file:paused",
            "file:wakeup", "file:scheduled", "bucket:project:1", "metrics:counters"}, shard
        slots = {client.cluster_keyslot(key) for key in keys}  # CLUSTER KEYSLOT, asked of the server
        assert len(slots) == 1, (shard, slots)
        holders = {client.get_node_from_key(key).name for key in keys}
        assert len(holders) == 1
        nodes |= holders
    assert len(nodes) == 3  # with these tags, 4 shards land on all 3 primaries
    feed = [key for key in keys_of(client) if key.startswith("logflow:feed:")]
    assert feed == ["logflow:feed:{7}", "logflow:feed:{7}:ids"]
    assert len({client.cluster_keyslot(key) for key in feed}) == 1
    # The pushes' counts are summed over the shards' hashes.
    assert spool.counters() == {"records_accepted": 4 * SHARDS}


def test_backpressure_answers_as_on_one_redis(key, project, bound):
    """LOGFLOW_MAX_QUEUE splits evenly over the shards: requests dealt in turn fill them all, then 503."""
    client = create_app(bound.replace(max_queue=200)).test_client()
    records = [{"message": "m%d" % number} for number in range(50)]
    answers = [post_logs(client, key, records) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [202] * 4 + [503]
    assert answers[-1].headers["Retry-After"] == "5"
    assert answers[-1].get_json() == {"error": "the queue is full; nothing was accepted, retry later"}
    # All or nothing: each accepted request is in both writers' queues, the refused one in neither.
    assert tasks.runtime.spool.queued_records("db") == tasks.runtime.spool.queued_records("file") == 200
    # GET /metrics sums the shards: the pushes' counters, the queues, their oldest request.
    label = ("project", str(project.id))
    before = scrape(client)
    assert before[("logflow_records_accepted_total", (label,))] == 200
    assert before[("logflow_records_rejected_total", (label, ("reason", "queue_full")))] == 50
    assert before[("logflow_queue_records", (("writer", "db"),))] == 200
    assert 0 <= before[("logflow_queue_oldest_seconds", (("writer", "file"),))] < 60
    assert drain_all() == 400 and len(stored_logs()) == 200
    after = scrape(client)
    assert after[("logflow_records_written_total", (("writer", "db"),))] == 200
    assert after[("logflow_queue_records", (("writer", "file"),))] == 0
    assert post_logs(client, key, records).status_code == 202


def test_rate_limits_answer_as_on_one_redis(key, bound):
    """A project's rate and burst split evenly over the shards: requests dealt in turn spend them all, then 429."""
    client = create_app(bound.replace(rate_limit=100, rate_burst=100)).test_client()
    records = [{"message": "m%d" % number} for number in range(25)]
    answers = [post_logs(client, key, records) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [202] * 4 + [429]
    assert answers[-1].headers["Retry-After"] == "1"
    assert answers[-1].get_json() == {
        "error": "this project sends more than its 100 records per second; nothing was accepted, retry later"}
    started = time.monotonic()
    accepted = 100
    deadline = started + 2.5
    while time.monotonic() < deadline:  # as fast as it answers
        accepted += 25 * (post_logs(client, key, records).status_code == 202)
    # The rate holds: the burst, then 100 records a second.
    assert 100 + 100 * 1.0 <= accepted <= 100 + 100 * (time.monotonic() - started) + 25


@pytest.mark.parametrize("settings", ["cluster, 4 shards"], indirect=True)
def test_a_request_larger_than_a_shards_share_of_the_burst_is_charged_in_full(key, bound):
    """Each shard's bucket admits it once full and goes into debt: the first wave is larger, the rate holds."""
    client = create_app(bound.replace(rate_limit=100, rate_burst=100)).test_client()
    records = [{"message": "m%d" % number} for number in range(100)]
    answers = [post_logs(client, key, records) for _ in range(SHARDS + 1)]
    # One Redis admits one such request, then asks for 1 s; each shard admits one, then waits 4 s.
    assert [answer.status_code for answer in answers] == [202] * SHARDS + [429]
    assert answers[-1].headers["Retry-After"] == "4"


def test_an_existing_single_shard_layout_is_still_drained(redis_server, tmp_path):
    """Records queued by a version before shards (and a batch it leased) are drained with 1 or 3 shards."""
    settings = base_settings(tmp_path).replace(redis_url=redis_server.url)
    for shards in (1, 3):
        spool = spools.open_spool(settings.replace(spool_shards=shards, lease_seconds=0.2))
        spool.client.flushdb()
        # What those versions' scripts wrote: a queue, its record count, a leased batch and its count.
        client = spool.client
        client.lpush("logflow:db:queue", b'{"count":2} queued 1', b'{"count":3} queued 2')
        client.rpush("logflow:db:batch:old", b'{"count":1} leased')
        client.zadd("logflow:db:leases", {"old": time.time() - 1})
        client.hset("logflow:db:queued:batches", "old", 1)
        client.set("logflow:db:queued", 6)
        assert spool.queued_records("db") == 6 and spool.depth("db") == 3
        leased = spool.claim("db", 1 << 20)  # the expired lease first, as before
        assert (leased.id, leased.payloads) == ("old", [b'{"count":1} leased'])
        queued = spool.claim("db", 1 << 20)
        assert queued.payloads == [b'{"count":2} queued 1', b'{"count":3} queued 2']
        spool.ack("db", leased.id)
        spool.ack("db", queued.id)
        assert spool.queued_records("db") == 0 and spool.depth("db") == 0
        assert [spool.claim("db", 1 << 20, shard) for shard in range(shards)] == [None] * shards


def test_one_shard_on_one_redis_keeps_the_key_names_of_versions_before_shards(redis_server, tmp_path):
    spool = spools.open_spool(base_settings(tmp_path).replace(redis_url=redis_server.url))
    spool.client.flushdb()
    spool.push(b'{"count":1}', ["db", "file"], 1, spools.Limit("project:1", 10, 10), [("records_accepted", 1)])
    spool.add_counters([("write_failures", 1)])
    spool.beat("host:1", time.time())
    spool.remember("last_write:db", "1", 60)
    spool.advance("keys")
    spool.strike("signin:ada", 60)
    spool.publish({7: ["iabc"]})
    assert keys_of(spool.client) == [
        "logflow:bucket:project:1", "logflow:consumers:heartbeats", "logflow:db:queue", "logflow:db:queued",
        "logflow:db:scheduled", "logflow:epoch:keys", "logflow:feed:7", "logflow:feed:7:ids",
        "logflow:file:queue", "logflow:file:queued", "logflow:file:scheduled", "logflow:memo:last_write:db",
        "logflow:metrics:counters", "logflow:strikes:signin:ada"]


@pytest.fixture
def cluster_service(tmp_path, postgres_server, redis_cluster):
    """A fresh database, the flushed cluster and SHARDS shards; every process stopped at the end."""
    service = make_service(tmp_path, postgres_server.create_database(unique_database_name("cluster")),
                           redis_cluster.url, LOGFLOW_SPOOL_SHARDS=SHARDS)
    yield service
    service.close()


def test_records_sent_through_real_processes_are_stored_once(cluster_service):
    """gunicorn and two consumers on the cluster: every accepted record in PostgreSQL and the files, once."""
    service = cluster_service
    service.start_web()
    consumers = [service.start_consumer(), service.start_consumer()]
    senders = [Sender(service, per_request=20, max_requests=100) for _ in range(3)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    accepted = set().union(*(sender.finish() for sender in senders))
    service.wait_delivered(accepted, consumers[0])
    assert assert_stored_once(service, accepted) == 0
    result = tally(service, "Redis Cluster, %d shards" % SHARDS, sum(s.sent for s in senders), accepted)
    assert (result.accepted, result.lost, result.db_duplicates) == (6000, 0, 0)
    # Every shard took requests (each counted its pushes), and every shard was drained.
    spool = spools.open_spool(base_settings(service.tmp_path).replace(
        redis_url=service.env["REDIS_URL"], spool_shards=SHARDS))
    assert spool.depth("db") == spool.depth("file") == 0
    assert all(spool.client.hgetall(spool._key("metrics", "counters", shard)) for shard in range(SHARDS))


def test_a_consumer_killed_holding_a_lease_has_its_batch_redelivered_to_another(cluster_service):
    """SIGKILL a consumer whose database write is blocked: after the lease, another consumer stores the batch."""
    service = cluster_service
    service.start_web()
    spool = spools.open_spool(base_settings(service.tmp_path).replace(
        redis_url=service.env["REDIS_URL"], spool_shards=SHARDS))
    blocker = psycopg2.connect(service.db_url)
    try:
        with blocker.cursor() as cursor:  # the writer's INSERT waits on this lock, its batch leased
            cursor.execute("LOCK TABLE logs IN ACCESS EXCLUSIVE MODE")
        sender = Sender(service, per_request=10, max_requests=40)
        sender.start()
        sender.join(timeout=60)
        accepted = sender.finish()
        doomed = service.start_consumer()

        def leased():
            doomed.check_alive()
            return sum(spool.client.zcard(spool._key("db", "leases", shard)) for shard in range(SHARDS))
        wait_for(leased, timeout=30, message="the consumer to lease a db batch")
        batches = {batch for shard in range(SHARDS) for batch in spool.client.zrange(spool._key("db", "leases", shard), 0, -1)}
        doomed.popen.kill()  # SIGKILL: the leased batches stay leased
        assert doomed.popen.wait(timeout=10) == -signal.SIGKILL
        killed_at = time.monotonic()
    finally:
        blocker.rollback()
        blocker.close()
    heir = service.start_consumer()
    service.wait_delivered(accepted, heir, timeout=LEASE_SECONDS + 30)
    waited = time.monotonic() - killed_at
    assert waited >= LEASE_SECONDS * 0.5  # not before the lease could run out
    assert_stored_once(service, accepted)
    assert spool.depth("db") == spool.depth("file") == 0 and batches
    print("redelivered and stored %.1f s after the SIGKILL (lease %d s)" % (waited, LEASE_SECONDS))


def test_the_cluster_url_names_the_nodes_and_keeps_redis_py_options():
    client = redis_url.connect("rediss+cluster://ada:s%40cret@10.0.0.1:7000,[::1]:7001,node3:7002/?ssl_ca_certs=/ca.pem")
    # The first node in redis-py's own URL, with the credentials and options; the others as more ways in.
    assert client.url == "rediss://ada:s%40cret@10.0.0.1:7000/?ssl_ca_certs=/ca.pem"
    assert client.more_nodes == [("::1", 7001), ("node3", 7002)]
    for url, reason in (("redis+cluster://10.0.0.1/", "must each be host:port, not '10.0.0.1'"),
                        ("redis+cluster://10.0.0.1:7000/2", "database 0 only")):
        with pytest.raises(ValueError, match=re.escape(reason)):
            redis_url.connect(url)


def test_a_process_starts_while_the_cluster_is_down_and_refuses_pushes_as_unavailable(tmp_path):
    """The cluster client is made on first use: a web process starts, and its pushes are 503s, not 500s."""
    dead = "redis+cluster://127.0.0.1:%d,127.0.0.1:%d/" % (free_port(), free_port())
    spool = spools.open_spool(base_settings(tmp_path).replace(redis_url=dead, spool_shards=SHARDS))
    with pytest.raises(spools.SpoolUnavailable, match="Redis Cluster cannot be connected"):
        spool.push(b'{"count":1}', ["db"], 1)
    with pytest.raises(spools.SpoolUnavailable):
        spool.ping()
