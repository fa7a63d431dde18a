"""Redis Sentinel: REDIS_URL's Sentinel form, and a failover under load with real processes.

A primary, its replicas and three sentinels run on 127.0.0.1 (services.start_sentinel_group);
gunicorn and huey_consumer run as the Procfile does, with REDIS_URL naming the sentinels. Senders
post steadily while the primary is SIGKILLed; the sentinels promote a replica, and ingestion
resumes with no restart. Each failover test prints one line (shown even without -s):

    Sentinel failover, LOGFLOW_REDIS_REPLICAS=N | sent N | accepted N | stored N | lost N | duplicated ...
        | statuses {202: N, 503: N} | /readyz 503 after the kill | promoted after N s, first 202 N s after the kill

The lagging ones first cut the replicas' links (and stop the consumer) for LAG_SECONDS, so that the promoted
replica lacks what the primary accepted meanwhile; their line ends with what was sent meanwhile and the bytes
of the replication stream the replicas lacked at the kill.

docs/scaling.md quotes the last measured one; run them with `python3 -m pytest -q tests/test_sentinel.py`.
"""
import collections
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis

import config
import models
import redis_url
import services
import spool
import spool_redis
import tasks
from conftest import base_settings, unavailable
from helpers import drain_all, post_logs, stored_logs, wait_for
from logflow import create_app
from processes import Sender, make_service, tally, unique_database_name
from test_metrics import scrape

# Ingestion must come back this soon after the primary is killed (measured: about 2-3 s; the
# sentinels need down-after-milliseconds, 1 s here, plus an election and the promotion).
RESUME_BOUND_SECONDS = 15
RETRY_AFTER_SECONDS = 1
SENDERS = 3
# How long the replicas' links stay cut while the senders post (lagging failovers): well within the
# sentinels' limit for a promotable replica, a link down for no more than 10 x down-after-milliseconds
# plus the primary's time down (sentinel.c, sentinelSelectSlave).
LAG_SECONDS = 1.5


def sentinel_group(request, directory, replicas):
    """A primary, `replicas` replicas and three sentinels, stopped when the test (or module) ends."""
    try:
        group = services.start_sentinel_group(str(directory), replicas=replicas)
    except services.ServiceUnavailable as error:
        unavailable(error)
    request.addfinalizer(group.stop)
    return group


@pytest.fixture(scope="module")
def watched_redis(request, tmp_path_factory):
    """A primary with one replica and three sentinels, for the tests that kill nothing; emptied for each."""
    return sentinel_group(request, tmp_path_factory.mktemp("sentinel"), replicas=1)


@pytest.fixture
def empty_redis(watched_redis):
    with redis_url.connect(watched_redis.url) as client:
        client.flushdb()
    return watched_redis


@pytest.mark.parametrize("url, sentinels, service, options, sentinel_options", [
    ("redis+sentinel://h1:26379,h2:26380,10.0.0.3/mymaster/0",
     [("h1", 26379), ("h2", 26380), ("10.0.0.3", 26379)], "mymaster", {"db": 0}, {}),
    # The data nodes' password before the @ (percent-encoded), the sentinels' own in the query.
    ("redis+sentinel://:p%40ss%2Cw@h1/cache/3?sentinel_password=s%26x",
     [("h1", 26379)], "cache", {"password": "p@ss,w", "db": 3}, {"password": "s&x"}),
    # A percent-encoded host: an IPv6 zone id.
    ("redis+sentinel://[fe80::1%25eth0]:26380/mymaster", [("fe80::1%eth0", 26380)], "mymaster", {"db": 0}, {}),
    ("redis+sentinel://logflow:pw@[::1]:26379,h2/mymaster?sentinel_username=watch&sentinel_password=w",
     [("::1", 26379), ("h2", 26379)], "mymaster", {"username": "logflow", "password": "pw", "db": 0},
     {"username": "watch", "password": "w"}),
    # TLS to the data nodes and to the sentinels, with the CA both trust.
    ("rediss+sentinel://:pw@h1,h2/mymaster/2?ssl_ca_certs=/etc/ssl/ca.pem&socket_timeout=3",
     [("h1", 26379), ("h2", 26379)], "mymaster",
     {"password": "pw", "db": 2, "ssl": True, "ssl_ca_certs": "/etc/ssl/ca.pem", "socket_timeout": 3.0},
     {"ssl": True, "ssl_ca_certs": "/etc/ssl/ca.pem", "socket_timeout": 3.0}),
])
def test_sentinel_url_forms(url, sentinels, service, options, sentinel_options):
    assert redis_url.parse_sentinel(url) == (sentinels, service, options, sentinel_options)
    assert config.load({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url, reason", [
    ("redis+sentinel://:secret@h1:26379", "a Sentinel URL names the primary's service after its hosts:"
     " redis+sentinel://[:password@]host:26379[,host:26379...]/service[/db]"),
    ("redis+sentinel://:secret@h1:26379,,h2/mymaster", "a Sentinel URL lists its sentinels as host:port,"
     " separated by commas: redis+sentinel://[:password@]host:26379[,host:26379...]/service[/db]"),
    ("redis+sentinel://:secret@h1:2637x/mymaster", "sentinel h1's port must be a number from 1 to 65535, not '2637x'"),
    ("redis+sentinel://:secret@h1/mymaster/zero",
     "the database after the service name must be a number (the 0 of /mymaster/0), not 'zero'"),
    # An unencoded / ? or # in the password: nothing of it, nor the user, in the error.
    ("redis+sentinel://logflow:se/secret@h1/mymaster", "reserved characters in the password must be percent-encoded:"
     " redis+sentinel://[:password@]host:26379[,host:26379...]/service[/db]"),
    ("redis+sentinel://logflow:se?secret@h1/mymaster", "reserved characters in the password must be percent-encoded:"
     " redis+sentinel://[:password@]host:26379[,host:26379...]/service[/db]"),
    ("sentinel://:secret@h1/mymaster", "must start with redis://, rediss://, unix://, redis+sentinel://,"
     " rediss+sentinel://, redis+cluster:// or rediss+cluster://, not sentinel://"),
])
def test_a_bad_sentinel_url_is_refused_in_one_line_without_its_password(url, reason):
    with pytest.raises(config.InvalidSetting) as refused:
        config.load({"REDIS_URL": url})
    assert str(refused.value) == "REDIS_URL: " + reason
    assert "secret" not in str(refused.value) and "logflow" not in str(refused.value) and "\n" not in str(refused.value)


def test_push_waits_for_replicas_and_says_when_too_few_confirm(empty_redis):
    """WAIT on the push's connection: 1 of 1 replica confirms; asking for 2 gets NotReplicated, records queued."""
    group = empty_redis
    confirmed = spool_redis.RedisSpool(group.url, 30, replicas=1, replicas_timeout=0.5)
    assert confirmed.push(b'{"count":1} confirmed', ["db"], 1) == [("db", 0)]
    # The script is not cached on a fresh primary (as after a failover): the pipeline loads it.
    confirmed.client.script_flush()
    assert confirmed.push(b'{"count":1} after a flush', ["db"], 1) == []
    too_many = spool_redis.RedisSpool(group.url, 30, replicas=2, replicas_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(spool.NotReplicated) as unconfirmed:
        too_many.push(b'{"count":1} unconfirmed', ["db"], 1)
    waited = time.monotonic() - started
    assert (unconfirmed.value.confirmed, unconfirmed.value.wanted) == (1, 2)
    assert 0.3 <= waited < 2, waited
    batch = confirmed.claim("db", 1 << 20)
    assert batch.payloads == [b'{"count":1} confirmed', b'{"count":1} after a flush', b'{"count":1} unconfirmed']


def readyz(service):
    """GET /readyz: (status, Retry-After)."""
    try:
        with urllib.request.urlopen(service.base_url + "/readyz", timeout=5) as response:
            return response.status, response.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After")


class ReadyzPoller(threading.Thread):
    """GET /readyz over and over until stopped, noting each answer's (status, Retry-After) and when it came."""

    def __init__(self, service):
        super().__init__(daemon=True)
        self.service, self.answers, self.stopped = service, [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            answer = readyz(self.service)
            self.answers.append((time.monotonic(), answer))
            self.stopped.wait(0.05)

    def stop(self):
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=10)

    def refusal(self, since):
        """The first 503 answered after `since`, or the last answer seen when none was (so a test shows what it got)."""
        after = [answer for at, answer in self.answers if at >= since]
        return next((answer for answer in after if answer[0] == 503), after[-1] if after else None)


Failover = collections.namedtuple("Failover", "service consumer group sent accepted accepted_after_kill attempts"
                                              " ready_during promoted_after resumed_after senders killed_at lag")


def test_a_sentinel_that_does_not_answer_is_skipped_at_once(empty_redis):
    dead = services._free_port()  # nothing listens there
    url = empty_redis.url.replace("redis+sentinel://", "redis+sentinel://127.0.0.1:%d," % dead)
    client = redis_url.connect(url, socket_timeout=5, socket_connect_timeout=2)
    started = time.monotonic()
    assert client.ping()
    # redis-py's own default retries each sentinel 10 times with backoff: about 4 s (at once: well under 0.1 s,
    # with room for a loaded CI machine).
    assert time.monotonic() - started < 2.5


def test_too_few_replicas_in_time_is_a_counted_503_saying_the_records_may_be_stored(
        tmp_path, postgres_server, empty_redis):
    """Through the app: 202 with the one replica there is; asking for two, a 503 + Retry-After, counted in /metrics."""
    group = empty_redis
    settings = base_settings(tmp_path).replace(
        database_url=postgres_server.create_database(unique_database_name("sentinel")), redis_url=group.url,
        redis_replicas=1, retry_after_seconds=RETRY_AFTER_SECONDS)
    app = create_app(settings)
    with models.database.connection_context():
        models.create_tables()
        key = models.ApiKey.issue(models.Project.create(name="acme"))
    client = app.test_client()
    assert post_logs(client, key, {"message": "replicated"}).status_code == 202

    app = create_app(settings.replace(redis_replicas=2, redis_replicas_timeout_seconds=0.2))
    client = app.test_client()
    response = post_logs(client, key, {"message": "queued, not replicated enough"})
    assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.get_json()["error"] == (
        "the records were queued, but 1 of the 2 Redis replicas asked for confirmed them within 0.2 s; they may"
        " still be stored: retry later with the same record ids, which the database stores once")
    assert scrape(client)[("logflow_requests_refused_total", (("reason", "not_replicated"),))] == 1
    # Queued all the same, and written: a resend with the same id is stored once.
    drain_all()
    assert [log["message"] for log in stored_logs()] == ["replicated", "queued, not replicated enough"]


def test_a_primary_short_of_replicas_refuses_the_push_before_queuing_it(tmp_path, postgres_server, empty_redis, caplog):
    """min-replicas-to-write 1, its one replica stopped: a prompt 503 saying nothing was accepted, the queue unchanged."""
    group = empty_redis
    settings = base_settings(tmp_path).replace(
        database_url=postgres_server.create_database(unique_database_name("sentinel")), redis_url=group.url,
        redis_replicas=1, redis_replicas_timeout_seconds=3, retry_after_seconds=RETRY_AFTER_SECONDS)
    with caplog.at_level("WARNING", logger="logflow"):
        app = create_app(settings)
    assert "min-replicas-to-write is 0, below LOGFLOW_REDIS_REPLICAS=1" in caplog.text
    with models.database.connection_context():
        models.create_tables()
        key = models.ApiKey.issue(models.Project.create(name="acme"))
    client = app.test_client()
    assert post_logs(client, key, {"message": "replicated"}).status_code == 202
    store = tasks.runtime.spool
    queued = [store.depth(writer) for writer in config.WRITERS]
    primary = redis.Redis(port=group.primary.port, socket_timeout=2)
    replica_pid = redis.Redis(port=group.replicas[0].port, socket_timeout=2).info("server")["process_id"]
    primary.config_set("min-replicas-max-lag", 1)
    primary.config_set("min-replicas-to-write", 1)
    os.kill(replica_pid, signal.SIGSTOP)
    try:
        wait_for(lambda: primary.info("replication")["min_slaves_good_slaves"] == 0, timeout=10,
                 message="the stopped replica no longer good")
        caplog.clear()
        with caplog.at_level("WARNING", logger="logflow"):
            create_app(settings)
        assert "min-replicas-to-write" not in caplog.text
        started = time.monotonic()
        response = post_logs(client, key, {"message": "refused by the primary"})
        # Refused before the script ran: no wait for WAIT's 3 s.
        assert time.monotonic() - started < 2
        assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert response.get_json()["error"] == "the queue is unavailable; nothing was accepted, retry later"
        assert [store.depth(writer) for writer in config.WRITERS] == queued
    finally:
        os.kill(replica_pid, signal.SIGCONT)
        primary.config_set("min-replicas-to-write", 0)
        primary.close()


Lag = collections.namedtuple("Lag", "cut_at offset_at_cut offset_at_kill replicas_offsets")


def replication_offset(server):
    """How far into the replication stream a server is: written (a primary) or received and applied (a replica)."""
    with redis.Redis(port=server.port, socket_timeout=2) as client:
        info = client.info("replication")
    return info["master_repl_offset" if info["role"] == "master" else "slave_repl_offset"]


def cut_replicas(group, senders):
    """Cut every replica's link to the primary and keep the senders posting for LAG_SECONDS: the primary goes on alone.

    The replicas connect as the primary's default user (they have no masterauth): refused PSYNC and SYNC,
    they retry every second and fail, while everything else goes on. A stopped replica (SIGSTOP) would not
    do: the kernel keeps what the primary sent it (socket buffers of megabytes), and even the dead
    primary's socket delivers the rest once the replica reads again; it had lost nothing.
    """
    with redis.Redis(port=group.primary.port, socket_timeout=2) as client:
        client.execute_command("ACL", "SETUSER", "default", "-psync", "-sync")
        assert client.client_kill_filter(_type="replica") == len(group.replicas)
    cut_at = time.monotonic()
    # Read after the cut: no replica can have anything written after this offset.
    offset_at_cut = replication_offset(group.primary)
    wait_for(lambda: time.monotonic() > cut_at + LAG_SECONDS
             and all(sum(sender.statuses(since=cut_at).values()) >= 2 for sender in senders),
             timeout=30, message="the senders answered while the replicas were cut off")
    return Lag(cut_at, offset_at_cut, None, None)


def while_cut_off(failover):
    """Statuses of the requests sent while the replicas were cut off and answered before the kill."""
    statuses = collections.Counter()
    for sender in failover.senders:
        statuses.update(sender.statuses(since=failover.lag.cut_at, until=failover.killed_at))
    return statuses


def check_lag(failover):
    """No replica had anything written after the cut, and the primary wrote on: returns the bytes they lacked."""
    lag = failover.lag
    assert max(lag.replicas_offsets) <= lag.offset_at_cut < lag.offset_at_kill, lag
    return lag.offset_at_kill - max(lag.replicas_offsets)


def failover_under_load(request, tmp_path, postgres_server, replicas, lagging=False):
    """SIGKILL the primary under steady load from several senders, no process restarted; returns what happened.

    lagging: every replica's link to the primary is cut for LAG_SECONDS first (cut_replicas), and the consumer
    stopped meanwhile, so the sentinels promote a replica that lacks the records accepted in that time.
    """
    # With LOGFLOW_REDIS_REPLICAS=N the group needs N + 1 replicas: one is promoted, N must remain.
    group = sentinel_group(request, tmp_path / "redis", replicas=replicas + 1)
    service = make_service(
        tmp_path, postgres_server.create_database(unique_database_name("sentinel")), group.url,
        LOGFLOW_RETRY_AFTER_SECONDS=RETRY_AFTER_SECONDS, LOGFLOW_REDIS_REPLICAS=replicas)
    request.addfinalizer(service.close)
    web = service.start_web()
    consumer = service.start_consumer()
    senders = [Sender(service, per_request=20, interval=0.05, max_seconds=90, timeout=10) for _ in range(SENDERS)]
    for sender in senders:
        sender.start()
    wait_for(lambda: consumer.check_alive() or (sum(len(sender.accepted) for sender in senders) >= 1000
                                                and service.db_count() > 0),
             timeout=30, message="records accepted and stored before the failover")

    old_port = group.primary.port
    # Polled from before the kill: under load /readyz may first be served after the promotion (down-after is 1 s).
    readiness = ReadyzPoller(service)
    readiness.start()
    request.addfinalizer(readiness.stop)
    if lagging:
        # The consumer falls behind too (as behind a slow PostgreSQL): what is accepted meanwhile waits in the queue.
        os.kill(consumer.pid, signal.SIGSTOP)
    try:
        lag = cut_replicas(group, senders) if lagging else None
        before_kill = set()
        for sender in senders:
            with sender.lock:
                before_kill |= sender.accepted
        if lag:
            lag = lag._replace(offset_at_kill=replication_offset(group.primary),
                               replicas_offsets=[replication_offset(replica) for replica in group.replicas])
        group.primary.kill()
    finally:
        if lagging:
            os.kill(consumer.pid, signal.SIGCONT)
    killed_at = time.monotonic()
    wait_for(lambda: group.primary_port() not in (None, old_port), timeout=30, message="a replica promoted")
    promoted_after = time.monotonic() - killed_at
    wait_for(lambda: all(sender.count_since(202, killed_at) >= 20 for sender in senders), timeout=30,
             message="202s again after the failover")
    wait_for(lambda: readyz(service)[0] == 200, timeout=30, message="/readyz 200 with the new primary")
    readiness.stop()
    ready_during = readiness.refusal(since=killed_at)
    web.check_alive()
    consumer.check_alive()
    accepted = set()
    for sender in senders:
        accepted |= sender.finish(allow_failures=True)
    attempts = [attempt for sender in senders for attempt in sender.attempts]
    resumed_after = min(attempt.ended for attempt in attempts
                        if attempt.status == 202 and attempt.started >= killed_at) - killed_at
    return Failover(service, consumer, group, sum(sender.sent for sender in senders), accepted,
                    accepted - before_kill, attempts, ready_during, promoted_after, resumed_after, senders,
                    killed_at, lag)


def check_and_report(failover, capsys, replicas, scenario="Sentinel failover", details=""):
    """Assert what holds with either setting; print the summary line, shown without -s too; returns the tally."""
    result = tally(failover.service, "%s, LOGFLOW_REDIS_REPLICAS=%d" % (scenario, replicas),
                   failover.sent, failover.accepted)
    statuses = collections.Counter(attempt.status if isinstance(attempt.status, int) else "no answer"
                                   for attempt in failover.attempts)
    line = ("%s | statuses %s | /readyz %s after the kill | promoted after %.1f s,"
            " first 202 %.1f s after the kill" % (result.line(), dict(statuses), failover.ready_during[0],
                                                  failover.promoted_after, failover.resumed_after)) + details
    with capsys.disabled():
        print("\n" + line)
    assert failover.sent and failover.accepted, "nothing was sent or accepted"
    # Clients saw the failover, and only as 503 + Retry-After: never a 500, never no answer.
    assert set(statuses) <= {202, 503} and statuses[503] > 0, statuses
    assert {attempt.retry_after for attempt in failover.attempts if attempt.status == 503} == {
        str(RETRY_AFTER_SECONDS)}
    assert failover.ready_during == (503, str(RETRY_AFTER_SECONDS))
    assert failover.resumed_after < RESUME_BOUND_SECONDS, line
    assert result.db_duplicates == 0
    return result


def spool_drained(failover):
    """True once no record waits for either writer in the (new) primary: queued or leased."""
    store = spool_redis.RedisSpool(failover.group.url, 30)
    return all(store.queued_records(writer) == 0 for writer in config.WRITERS)


def test_failover_with_one_replica_to_confirm_loses_nothing(request, tmp_path, capsys, postgres_server):
    """LOGFLOW_REDIS_REPLICAS=1: every record that got a 202 is stored, though the primary that took it died."""
    failover = failover_under_load(request, tmp_path, postgres_server, replicas=1)
    # Delivered by the same consumer: its BRPOP, claims and acks followed the primary.
    failover.service.wait_delivered(failover.accepted, failover.consumer)
    result = check_and_report(failover, capsys, replicas=1)
    assert result.lost == 0


def test_failover_without_replicas_to_confirm_reports_what_it_lost(request, tmp_path, capsys, postgres_server):
    """LOGFLOW_REDIS_REPLICAS=0: what the dead primary acknowledged but had not replicated is lost, and counted."""
    failover = failover_under_load(request, tmp_path, postgres_server, replicas=0)
    # What was accepted after the kill went to the new primary: all of it is stored, by the same consumer.
    failover.service.wait_delivered(failover.accepted_after_kill, failover.consumer)
    wait_for(lambda: spool_drained(failover), timeout=30, message="the spool drained on the new primary")
    result = check_and_report(failover, capsys, replicas=0)
    # The price of 0 is reported, not asserted: on one machine replication is fast, and often nothing is lost.
    assert result.lost <= len(failover.accepted - failover.accepted_after_kill)


def test_a_lagging_replica_promoted_loses_what_got_a_202_without_replicas_to_confirm(
        request, tmp_path, capsys, postgres_server):
    """LOGFLOW_REDIS_REPLICAS=0, the replica cut off, then promoted: the 202s it never got are lost, and counted."""
    failover = failover_under_load(request, tmp_path, postgres_server, replicas=0, lagging=True)
    failover.service.wait_delivered(failover.accepted_after_kill, failover.consumer)
    wait_for(lambda: spool_drained(failover), timeout=30, message="the spool drained on the new primary")
    behind = check_lag(failover)
    during = while_cut_off(failover)
    result = check_and_report(failover, capsys, replicas=0, scenario="Lagging replica promoted", details=(
        " | replica cut off %.1f s: %d requests 202'd meanwhile, it lacked %d bytes of the stream at the kill"
        % (LAG_SECONDS, during[202], behind)))
    # The primary went on accepting while its replica took nothing.
    assert during[202] > 0, during
    # The loss is reported, not asserted (what the consumer had claimed before its stop may be stored).
    assert result.lost <= len(failover.accepted - failover.accepted_after_kill)


def not_replicated(sender):
    """The error of each refused request of a sender, paired with its attempt (both are noted in order)."""
    with sender.lock:
        refused = [attempt for attempt in sender.attempts if attempt.status != 202]
        return [(attempt, reply) for attempt, (_, reply) in zip(refused, sender.failures)]


def test_a_lagging_replica_promoted_loses_no_202_with_one_replica_to_confirm(
        request, tmp_path, capsys, postgres_server):
    """LOGFLOW_REDIS_REPLICAS=1, both replicas cut off: no 202 while they lag; after the failover, every 202 stored."""
    failover = failover_under_load(request, tmp_path, postgres_server, replicas=1, lagging=True)
    failover.service.wait_delivered(failover.accepted, failover.consumer)
    behind = check_lag(failover)
    during = while_cut_off(failover)
    result = check_and_report(failover, capsys, replicas=1, scenario="Lagging replica promoted", details=(
        " | replicas cut off %.1f s: %s meanwhile, they lacked %d bytes of the stream at the kill"
        % (LAG_SECONDS, dict(during), behind)))
    assert set(during) == {503}, during
    refusals = [reply["error"] for sender in failover.senders for attempt, reply in not_replicated(sender)
                if attempt.started >= failover.lag.cut_at and attempt.ended <= failover.killed_at]
    # A request in flight when the primary died, before killed_at was noted, rightly has its answer lost.
    assert len(refusals) == during[503] and all(
        error.startswith(("the records were queued, but 0 of the 1 Redis replicas", "the queue's answer was lost"))
        for error in refusals), refusals
    assert any(error.startswith("the records were queued, but 0 of the 1 Redis replicas") for error in refusals)
    assert result.lost == 0
