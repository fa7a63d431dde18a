"""The spool on both backends: batches, leases, redelivery and wake-ups."""
import os
import signal
import subprocess
import sys

import pytest

import services
import spool as spools
import spool_redis
from conftest import unavailable
from helpers import wait_for
from processes import ROOT


@pytest.fixture
def spool(bound):
    return spools.open_spool(bound)


@pytest.mark.parametrize("first", ["spool", "spool_redis", "spool_sqlite"])
def test_the_contract_and_either_backend_import_in_any_order(first):
    # The backends import spool for the contract; spool imports a backend only when asked for one.
    code = ("import %s, spool, spool_redis, spool_sqlite; print(issubclass(spool_redis.RedisSpool, spool.Spool),"
            " issubclass(spool_sqlite.SqliteSpool, spool.Spool))" % first)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "True True\n", "")


def test_claimed_batches_hold_what_was_pushed_in_order(spool):
    for number in range(5):
        spool.push(b"payload %d" % number, ["db", "file"], 1)
    batch = spool.claim("db", max_bytes=1 << 20)
    assert batch.payloads == [b"payload %d" % n for n in range(5)]
    assert batch.attempts == 0 and batch.more is False
    assert spool.depth("db") == 5
    spool.ack("db", batch.id)
    assert spool.depth("db") == 0 and spool.claim("db", 1 << 20) is None
    # The other writer's queue is untouched by the first writer's work.
    assert spool.depth("file") == 5


def test_batches_are_bounded_by_bytes(spool):
    for number in range(10):
        spool.push(b"x" * 1000, ["db"], 1)
    first = spool.claim("db", max_bytes=3000)
    assert len(first.payloads) == 3 and first.more
    second = spool.claim("db", max_bytes=3000)
    assert second.id != first.id and len(second.payloads) == 3


def test_an_unacknowledged_batch_is_redelivered_after_its_lease(bound):
    spool = spools.open_spool(bound.replace(lease_seconds=0.3))
    spool.push(b"precious", ["db"], 1)
    batch = spool.claim("db", 1 << 20)
    assert spool.claim("db", 1 << 20) is None  # leased to someone else
    again = wait_for(lambda: spool.claim("db", 1 << 20), timeout=10, message="redelivery")
    assert again.id == batch.id and again.payloads == [b"precious"]


def test_a_failed_batch_comes_back_after_its_retry_delay(spool):
    spool.push(b"retry me", ["file"], 1)
    batch = spool.claim("file", 1 << 20)
    assert spool.fail("file", batch.id, 0.2) == 1
    assert spool.claim("file", 1 << 20) is None
    again = wait_for(lambda: spool.claim("file", 1 << 20), timeout=10, message="retry")
    assert again.id == batch.id and again.attempts == 1


def test_one_wake_up_per_lease(bound):
    spool = spools.open_spool(bound.replace(lease_seconds=0.5))
    assert spool.reserve_wakeup("db") is None  # nothing leased
    spool.push(b"a", ["db"], 1)
    spool.push(b"b", ["file"], 1)
    batch = spool.claim("db", 1 << 20)
    assert 0 < spool.reserve_wakeup("db") <= 0.5
    assert spool.reserve_wakeup("db") is None  # reserved already
    assert spool.reserve_wakeup("file") is None  # the other writer has no lease
    # Once the lease has run out the reservation has too.
    wait_for(lambda: spool.claim("db", 1 << 20), timeout=10, message="redelivery")
    assert spool.reserve_wakeup("db") is not None
    spool.ack("db", batch.id)
    assert spool.reserve_wakeup("db") is None


def test_one_wake_up_per_burst(spool):
    assert spool.push(b"a", ["db", "file"], 1) == ["db", "file"]
    assert spool.push(b"b", ["db", "file"], 1) == []
    spool.ack("db", spool.claim("db", 1 << 20).id)
    assert spool.claim("db", 1 << 20) is None  # queue empty: the flag is cleared
    assert spool.push(b"c", ["db", "file"], 1) == ["db"]


def test_pushes_from_several_processes_lose_nothing(bound):
    import multiprocessing
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_push_many, args=(bound, n)) for n in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    spool = spools.open_spool(bound)
    seen = []
    while (batch := spool.claim("db", 1 << 20)) is not None:
        seen.extend(batch.payloads)
        spool.ack("db", batch.id)
    assert sorted(seen) == sorted(b"%d-%d" % (n, i) for n in range(4) for i in range(200))


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
    """Every payload queued for a writer, claimed and acknowledged, sorted."""
    seen = []
    while (batch := spool.claim(writer, 1 << 20)) is not None:
        seen.extend(batch.payloads)
        spool.ack(writer, batch.id)
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


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_claims_leave_no_bookkeeping_behind_in_redis(spool):
    """Each claimed batch's record count waits in a hash until its ack; an empty claim must leave none there."""
    spool.push(b'{"count":3}', ["db"], 3)
    batch = spool.claim("db", 1 << 20)
    spool.ack("db", batch.id)
    for _ in range(5):  # what every idle sweep and wake-up does
        assert spool.claim("db", 1 << 20) is None
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
