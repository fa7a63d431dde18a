"""The spool on both backends: batches, leases, redelivery and wake-ups.

Each test also runs on Redis with each writer's queue in 3 shards, on one
Redis and on a Redis Cluster. The Redis spool deals a process's pushes out to
the shards in turn (round robin), so N·shards pushes put N in each shard.
"""
import os
import signal
import subprocess
import sys

import pytest

import services
import spool as spools
import spool_redis
from conftest import base_settings, unavailable
from helpers import wait_for
from processes import ROOT


@pytest.fixture(params=["sqlite", "postgres", "redis, 3 shards", "cluster, 3 shards"])
def settings(request, tmp_path):
    """conftest's two backends, and Redis with 3 shards, on one Redis and on a 3-node Redis Cluster."""
    settings = base_settings(tmp_path)
    if request.param == "sqlite":
        return settings
    redis_server = request.getfixturevalue("redis_cluster" if request.param.startswith("cluster") else "redis_server")
    settings = settings.replace(database_url=request.getfixturevalue("postgres_server").url, redis_url=redis_server.url)
    return settings.replace(spool_shards=3) if "shards" in request.param else settings


@pytest.fixture
def spool(bound):
    return spools.open_spool(bound)


def claim_any(spool, writer, max_bytes=1 << 20):
    """(shard, batch) of the first shard with a batch to claim, or (None, None)."""
    for shard in range(spool.shards):
        batch = spool.claim(writer, max_bytes, shard)
        if batch is not None:
            return shard, batch
    return None, None


@pytest.mark.parametrize("first", ["spool", "spool_redis", "spool_sqlite"])
def test_the_contract_and_either_backend_import_in_any_order(first):
    # The backends import spool for the contract; spool imports a backend only when asked for one.
    code = ("import %s, spool, spool_redis, spool_sqlite; print(issubclass(spool_redis.RedisSpool, spool.Spool),"
            " issubclass(spool_sqlite.SqliteSpool, spool.Spool))" % first)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "True True\n", "")


def test_claimed_batches_hold_what_was_pushed_in_order(spool):
    pushed = [b"payload %d" % number for number in range(5 * spool.shards)]
    for payload in pushed:
        spool.push(payload, ["db", "file"], 1)
    batches = [spool.claim("db", 1 << 20, shard) for shard in range(spool.shards)]
    for batch in batches:
        # Each shard's in the order pushed; every shard holds its share.
        assert batch.payloads == sorted(batch.payloads, key=pushed.index) and len(batch.payloads) == 5
        assert batch.attempts == 0 and batch.more is False
    assert sorted(payload for batch in batches for payload in batch.payloads) == sorted(pushed)
    assert spool.depth("db") == len(pushed)
    for shard, batch in enumerate(batches):
        spool.ack("db", batch.id, shard)
    assert spool.depth("db") == 0 and claim_any(spool, "db") == (None, None)
    # The other writer's queue is untouched by the first writer's work.
    assert spool.depth("file") == len(pushed)


def test_batches_are_bounded_by_bytes(spool):
    for number in range(10 * spool.shards):
        spool.push(b"x" * 1000, ["db"], 1)
    for shard in range(spool.shards):
        first = spool.claim("db", 3000, shard)
        assert len(first.payloads) == 3 and first.more
        second = spool.claim("db", 3000, shard)
        assert second.id != first.id and len(second.payloads) == 3


def test_an_unacknowledged_batch_is_redelivered_after_its_lease(bound):
    spool = spools.open_spool(bound.replace(lease_seconds=0.3))
    spool.push(b"precious", ["db"], 1)
    shard, batch = claim_any(spool, "db")
    assert claim_any(spool, "db") == (None, None)  # leased to someone else
    again = wait_for(lambda: spool.claim("db", 1 << 20, shard), timeout=10, message="redelivery")
    assert again.id == batch.id and again.payloads == [b"precious"]


def test_a_failed_batch_comes_back_after_its_retry_delay(spool):
    spool.push(b"retry me", ["file"], 1)
    shard, batch = claim_any(spool, "file")
    assert spool.fail("file", batch.id, 0.2, shard) == 1
    assert spool.paused("file", shard) > 0 and spool.paused("file") > 0
    assert claim_any(spool, "file") == (None, None)
    again = wait_for(lambda: spool.claim("file", 1 << 20, shard), timeout=10, message="retry")
    assert again.id == batch.id and again.attempts == 1


def test_one_wake_up_per_lease(bound):
    spool = spools.open_spool(bound.replace(lease_seconds=0.5))
    assert spool.reserve_wakeup("db") is None  # nothing leased
    spool.push(b"a", ["db"], 1)
    spool.push(b"b", ["file"], 1)
    shard, batch = claim_any(spool, "db")
    assert [spool.reserve_wakeup("db", other) for other in range(spool.shards) if other != shard] == \
        [None] * (spool.shards - 1)  # the other shards have no lease
    assert 0 < spool.reserve_wakeup("db", shard) <= 0.5
    assert spool.reserve_wakeup("db", shard) is None  # reserved already
    assert [spool.reserve_wakeup("file", other) for other in range(spool.shards)] == \
        [None] * spool.shards  # the other writer has no lease
    # Once the lease has run out the reservation has too.
    wait_for(lambda: spool.claim("db", 1 << 20, shard), timeout=10, message="redelivery")
    assert spool.reserve_wakeup("db", shard) is not None
    spool.ack("db", batch.id, shard)
    assert spool.reserve_wakeup("db", shard) is None


def test_one_wake_up_per_burst(spool):
    # A shard's first push wakes both writers there; the next in that shard, none.
    woken = [spool.push(b"a", ["db", "file"], 1) for _ in range(spool.shards)]
    shards = [queues[0][1] for queues in woken]
    assert sorted(shards) == list(range(spool.shards))
    assert woken == [[("db", shard), ("file", shard)] for shard in shards]
    assert [spool.push(b"b", ["db", "file"], 1) for _ in range(spool.shards)] == [[]] * spool.shards
    for shard in shards:
        spool.ack("db", spool.claim("db", 1 << 20, shard).id, shard)
        assert spool.claim("db", 1 << 20, shard) is None  # queue empty: the flag is cleared
    assert sorted(spool.push(b"c", ["db", "file"], 1) for _ in range(spool.shards)) == \
        [[("db", shard)] for shard in range(spool.shards)]


def test_pushes_from_several_processes_lose_nothing(bound):
    import multiprocessing
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_push_many, args=(bound, n)) for n in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert _drained(spools.open_spool(bound), "db") == sorted(b"%d-%d" % (n, i) for n in range(4) for i in range(200))


def _push_many(settings, number):
    spool = spools.open_spool(settings)
    for index in range(200):
        spool.push(b"%d-%d" % (number, index), ["db"], 1)


def test_pushes_from_several_threads_of_one_spool_lose_nothing(spool):
    import threading
    threads = [threading.Thread(target=lambda n=n: [spool.push(b"%d-%d" % (n, i), ["db"], 1)
                                                    for i in range(200)]) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert _drained(spool, "db") == sorted(b"%d-%d" % (n, i) for n in range(8) for i in range(200))


def test_a_forked_child_pushes_on_its_own_connection(spool):
    # The parent has pushed (on Redis: it holds a connection of its own), then forks.
    import multiprocessing
    spool.push(b"parent before", ["db"], 1)
    child = multiprocessing.get_context("fork").Process(
        target=lambda: [spool.push(b"child %d" % i, ["db"], 1) for i in range(100)])
    child.start()
    spool.push(b"parent during", ["db"], 1)
    child.join(60)
    assert child.exitcode == 0
    spool.push(b"parent after", ["db"], 1)
    assert _drained(spool, "db") == sorted([b"parent before", b"parent during", b"parent after"]
                                           + [b"child %d" % i for i in range(100)])


def _drained(spool, writer):
    """Every payload queued for a writer (in every shard), claimed and acknowledged, sorted."""
    seen = []
    for shard in range(spool.shards):
        while (batch := spool.claim(writer, 1 << 20, shard)) is not None:
            seen.extend(batch.payloads)
            spool.ack(writer, batch.id, shard)
    return sorted(seen)


def test_processes_opening_a_new_spool_at_once_lose_nothing(bound, tmp_path):
    # Dev mode's gunicorn workers and consumer open a fresh SQLite spool at the
    # same moment: on a new file each of them switches it to WAL. Released
    # together, 8 processes raced there in about one round in four (SQLite
    # answered "database is locked" at once, without its busy timeout).
    import multiprocessing
    context = multiprocessing.get_context("fork")
    expected = []
    for round_number in range(20):
        settings = bound.replace(data_dir=str(tmp_path / ("round %d" % round_number)))
        barrier = context.Barrier(8)
        processes = [context.Process(target=_open_and_push, args=(settings, barrier, b"%d-%d" % (round_number, n)))
                     for n in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [process.exitcode for process in processes] == [0] * 8, "round %d" % round_number
        pushed = [b"%d-%d" % (round_number, n) for n in range(8)]
        if bound.redis_url:
            expected.extend(pushed)  # one shared Redis: check every round at the end
        else:
            assert _drained(spools.open_spool(settings), "db") == sorted(pushed)
    if bound.redis_url:
        assert _drained(spools.open_spool(bound), "db") == sorted(expected)


def _open_and_push(settings, barrier, payload):
    spool = spools.open_spool(settings)
    barrier.wait(30)
    spool.push(payload, ["db"], 1)


@pytest.mark.parametrize("settings", ["postgres", "cluster, 3 shards"], indirect=True)
def test_claims_leave_no_bookkeeping_behind_in_redis(spool):
    """Each claimed batch's record count waits in a hash until its ack; an empty claim must leave none there."""
    for _ in range(spool.shards):
        spool.push(b'{"count":3}', ["db"], 3)
    assert spool.queued_records("db") == 3 * spool.shards
    for shard in range(spool.shards):
        spool.ack("db", spool.claim("db", 1 << 20, shard).id, shard)
        for _ in range(5):  # what every idle sweep and wake-up does
            assert spool.claim("db", 1 << 20, shard) is None
    # Redis drops a hash with no field left.
    assert {key.decode(): spool.client.hgetall(key) for key in spool.client.scan_iter("*:batches")} == {}
    assert spool.queued_records("db") == 0


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_counts_left_by_empty_claims_of_older_versions_are_cleared(spool):
    counts = "logflow:db:queued:batches"
    spool.client.hset(counts, mapping={"stale-%d" % n: 0 for n in range(2500)})  # more than one HSCAN page
    spool.push(b'{"count":3}', ["db"], 3)
    spool.push(b"no count", ["file"], 1)  # a leased batch that counts 0 records stays
    batch, uncounted = spool.claim("db", 1 << 20), spool.claim("file", 1 << 20)
    assert spool.forget_empty_claims("db") == 2500 and spool.forget_empty_claims("file") == 0
    assert spool.client.hgetall(counts) == {batch.id.encode(): b"3"}
    assert spool.client.hgetall("logflow:file:queued:batches") == {uncounted.id.encode(): b"0"}
    spool.ack("db", batch.id)
    assert spool.queued_records("db") == 0 and spool.client.hgetall(counts) == {}


@pytest.fixture
def own_redis(request, tmp_path):
    """A Redis of this test's own, which it may stop or kill."""
    try:
        server = services.start_redis(str(tmp_path / "redis"))
    except services.ServiceUnavailable as error:
        unavailable(error)
    request.addfinalizer(server.kill)
    return server


def test_a_push_whose_answer_is_lost_is_told_apart_from_one_never_sent(own_redis):
    """Sent, then no answer (the server stopped): OutcomeUnknown, and the push is queued; no server: nothing sent."""
    store = spool_redis.RedisSpool(own_redis.url + "?socket_timeout=0.5", 30)
    store.push(b'{"count":1} before', ["db"], 1)  # the connection is open and the script cached
    pid = store.client.info("server")["process_id"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(spools.OutcomeUnknown):
            store.push(b'{"count":1} answer lost', ["db"], 1)
    finally:
        os.kill(pid, signal.SIGCONT)
    # The stopped server had the push in its socket: running again, it queues it, once (redis-py did not resend it).
    wait_for(lambda: store.queued_records("db") == 2, timeout=10, message="the sent push queued")
    assert store.claim("db", 1 << 20).payloads == [b'{"count":1} before', b'{"count":1} answer lost']
    own_redis.kill()
    with pytest.raises(spools.SpoolUnavailable) as refused:
        store.push(b'{"count":1} never sent', ["db"], 1)
    assert not isinstance(refused.value, spools.OutcomeUnknown)
