"""Two LogFlow hosts on one machine: one Redis and one PostgreSQL shared, everything else their own.

Each "host" is a copy of the production set-up: the Procfile's web line and a
huey consumer, with its own LOGFLOW_DATA_DIR and LOGFLOW_LOG_DIR (its daily
files are its own disk). What must hold (issue 17): every accepted record is
one row; each daily-file line is on exactly one host and the hosts' files
together hold every record; retention and /metrics work on each; a host
SIGKILLed wholesale loses nothing, its leased batches going to the other.
"""
import datetime
import os
import signal
import subprocess
import sys
import urllib.request

import redis

from helpers import file_records, wait_for
from processes import (DELIVERY_TIMEOUT, ROOT, Sender, Service, child_pids, get_status, make_service, query,
                       unique_database_name)

WRITERS = ("db", "file")


def make_hosts(request, tmp_path, postgres_server, redis_server, **settings):
    """Hosts a and b on one new database and the session's Redis, each with its web and consumer running."""
    a = make_service(tmp_path / "a", postgres_server.create_database(unique_database_name("hosts")), redis_server.url,
                     **settings)
    b = Service(tmp_path / "b", dict(a.env, LOGFLOW_LOG_DIR=str(tmp_path / "b" / "logs"),
                                     LOGFLOW_DATA_DIR=str(tmp_path / "b" / "data")), a.key)
    for host in (a, b):
        host.tmp_path.mkdir(exist_ok=True)
        request.addfinalizer(host.close)
        host.start_web()
        host.consumer = host.start_consumer()
    # Both consumers beating before any record is sent, or the first one up takes every batch.
    wait_for(lambda: a.consumer.check_alive() or b.consumer.check_alive()
             or metric(a.base_url, "logflow_consumers_alive") == 2, timeout=60, interval=0.2,
             message="both hosts' consumers started")
    return a, b


def file_ids(host):
    """The ids of every line in the host's daily files, duplicates kept."""
    return [record["id"] for record in file_records(host.log_dir)]


def db_rows(host):
    """(rows, distinct ids) in the shared logs table."""
    return query(host.db_url, "SELECT count(*), count(DISTINCT id) FROM logs")[0]


def delivered(a, b, ids):
    """True once every id is a row and a line in one host's files or the other's."""
    in_files = set(file_ids(a)) | set(file_ids(b))
    return ids <= a.db_ids() and ids <= in_files


def leases(redis_url):
    """Batches leased now, per writer."""
    with redis.Redis.from_url(redis_url) as client:
        return {writer: client.zcard("logflow:%s:leases" % writer) for writer in WRITERS}


def metric(base_url, name):
    """The sum of a metric's samples on a host's /metrics."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_two_hosts_share_the_work(request, tmp_path, postgres_server, redis_server):
    # Leases long enough that no batch is redelivered on a loaded machine: a redelivered file batch
    # would rightly be on both hosts (the kill test below shows that case).
    a, b = make_hosts(request, tmp_path, postgres_server, redis_server, LOGFLOW_LEASE_SECONDS=60)
    senders = [Sender(host, per_request=20, max_requests=60) for host in (a, b, a, b)]
    for sender in senders:
        sender.start()
    accepted = set()
    for sender in senders:
        sender.join(timeout=120)
        accepted |= sender.finish()
    assert len(accepted) == 4 * 60 * 20

    wait_for(lambda: delivered(a, b, accepted), timeout=DELIVERY_TIMEOUT, interval=0.5,
             message="every record stored through one host or the other")
    assert db_rows(a) == (len(accepted), len(accepted))
    on_a, on_b = file_ids(a), file_ids(b)
    # Each line on exactly one host, once; together every record; and both consumers did some of the work.
    assert len(on_a) == len(set(on_a)) and len(on_b) == len(set(on_b))
    assert not set(on_a) & set(on_b)
    assert set(on_a) | set(on_b) == accepted
    assert on_a and on_b, "one host's consumer wrote every file line: %d on a, %d on b" % (len(on_a), len(on_b))
    print("\ntwo hosts: %d records, %d file lines on a, %d on b" % (len(accepted), len(on_a), len(on_b)))

    # /metrics on each host: the counters are the shared queue's, so each host reports every record,
    # and each sees both consumers alive.
    for host in (a, b):
        assert metric(host.base_url, "logflow_records_accepted_total") == len(accepted)
        assert metric(host.base_url, "logflow_consumers_alive") == 2


def test_each_host_prunes_its_own_files(request, tmp_path, postgres_server, redis_server):
    a, b = make_hosts(request, tmp_path, postgres_server, redis_server)
    (project_id,), = query(a.db_url, "SELECT id FROM projects WHERE name = 'e2e'")
    expired = (datetime.date.today() - datetime.timedelta(days=400)).isoformat() + ".log"
    for host in (a, b):
        folder = os.path.join(host.log_dir, str(project_id))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, expired), "w") as old:
            old.write('{"id": "old", "message": "from last year"}\n')

    def prune(host):
        done = subprocess.run([sys.executable, "manage.py", "prune"], cwd=ROOT, env=host.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    # Host a's prune removes a's expired file and leaves b's disk alone; b's prune then removes b's.
    assert "file: deleted 1 files" in prune(a)
    assert not os.path.exists(os.path.join(a.log_dir, str(project_id), expired))
    assert os.path.exists(os.path.join(b.log_dir, str(project_id), expired))
    assert "file: deleted 1 files" in prune(b)
    assert not os.path.exists(os.path.join(b.log_dir, str(project_id), expired))


def freeze(process):
    os.kill(process.pid, signal.SIGSTOP)


def thaw(process):
    os.kill(process.pid, signal.SIGCONT)


def test_a_host_killed_wholesale_loses_nothing(request, tmp_path, postgres_server, redis_server):
    a, b = make_hosts(request, tmp_path, postgres_server, redis_server)
    senders = {host.base_url: Sender(host, per_request=50, max_requests=2000, max_seconds=60) for host in (a, b)}
    for sender in senders.values():
        sender.start()

    # Only a's consumer may claim while b's is stopped: leases held when a is frozen are a's.
    freeze(b.consumer)
    try:
        def a_holds_a_lease():
            freeze(a.consumer)
            if sum(leases(a.env["REDIS_URL"]).values()):
                return True
            thaw(a.consumer)
            return False
        wait_for(a_holds_a_lease, timeout=30, interval=0.05, message="a's consumer holding a leased batch")
        orphaned = leases(a.env["REDIS_URL"])
        # Host a goes as a machine would: its gunicorn master, workers and consumer, all at once.
        web = next(process for process in a.processes if process.name == "gunicorn")
        doomed = [web.pid, *child_pids(web.pid), a.consumer.pid]
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
    finally:
        thaw(b.consumer)
    for process in a.processes:
        process.popen.wait(timeout=10)

    # b keeps taking records for a while after a is gone; a's sender only gets errors now.
    b_sender = senders[b.base_url]
    accepted_before = len(b_sender.accepted)
    wait_for(lambda: len(b_sender.accepted) >= accepted_before + 500, timeout=30, interval=0.1,
             message="host b accepting records after host a died")
    accepted = senders[a.base_url].finish(allow_failures=True) | b_sender.finish()

    wait_for(lambda: b.consumer.check_alive() or delivered(a, b, accepted), timeout=DELIVERY_TIMEOUT, interval=0.5,
             message="every accepted record stored after host a died")
    rows, distinct = db_rows(a)
    on_a, on_b = file_ids(a), file_ids(b)
    lost = accepted - a.db_ids()
    print("\nhost killed wholesale | leased by it at the kill: %s batches | accepted %d | rows %d | lost %d"
          " | file lines on a %d, on b %d, on both %d" % (orphaned, len(accepted), rows, len(lost),
                                                          len(on_a), len(on_b), len(set(on_a) & set(on_b))))
    assert sum(orphaned.values()) >= 1
    assert rows == distinct and accepted <= a.db_ids()
    assert accepted <= set(on_a) | set(on_b)
    # The leased batches were a's; b took them over once their leases ran out.
    assert sum(leases(a.env["REDIS_URL"]).values()) == 0
    assert get_status(b.base_url + "/healthz") == 200
