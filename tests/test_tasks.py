"""The consumer's side: draining, per-writer retries, and a queue that runs no foreign code."""
import logging
import os
import pickle
import subprocess
import sys
import threading

import orjson
import pytest

import tasks
from helpers import drain_all, file_records, post_logs, stored_logs, wait_for
from processes import HUEY_CONSUMER, ROOT, dev_mode_environment


def test_drain_task_writes_a_batch(client, key, bound):
    post_logs(client, key, [{"message": "a"}, {"message": "b"}])
    assert tasks.drain.call_local("db") == 2
    assert tasks.drain.call_local("db") == 0
    assert len(stored_logs()) == 2 and file_records(bound.log_dir) == []


def test_a_failing_writer_is_retried_alone(client, key, project, bound, caplog):
    # A file where the project's folder should be: the file writer fails for real.
    os.makedirs(bound.log_dir)
    blocker = os.path.join(bound.log_dir, str(project.id))
    open(blocker, "w").close()
    post_logs(client, key, [{"message": "one"}, {"message": "two"}])
    with caplog.at_level(logging.ERROR, logger="logflow"):
        drain_all()
    assert len(stored_logs()) == 2
    assert "file writer failed" in caplog.text and "attempt 1" in caplog.text
    assert tasks.runtime.spool.depth("db") == 0
    assert tasks.runtime.spool.depth("file") == 1

    os.remove(blocker)
    wait_for(lambda: drain_all() or file_records(bound.log_dir), timeout=10, message="file retry")
    assert sorted(r["message"] for r in file_records(bound.log_dir)) == ["one", "two"]
    assert tasks.runtime.spool.depth("file") == 0
    assert len(stored_logs()) == 2


def test_retry_delays_grow_and_are_capped(bound):
    # Floats, as the environment's settings are: 0.5 * 2 ** 1100 overflows where an int would not.
    tasks.configure(bound.replace(retry_base_seconds=0.5, retry_max_seconds=4.0))
    # 1,100: a batch that failed all through a long outage.
    for attempts, ceiling in ((0, 0.5), (1, 1), (2, 2), (3, 4), (10, 4), (1100, 4), (10**6, 4)):
        delays = [tasks.retry_delay(attempts) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)


def test_queue_messages_are_json(bound):
    tasks.huey.flush()
    tasks.drain("file")
    [raw] = tasks.huey.storage.enqueued_items()
    assert orjson.loads(raw)["args"] == ["file"]
    [task] = tasks.huey.pending()
    assert task.name == "drain" and task.args == ("file",)
    tasks.huey.flush()


class Exploit:
    def __reduce__(self):
        return (open, ("/tmp/logflow-pickle-ran", "w"))


def test_a_forged_pickle_message_runs_no_code(bound):
    if os.path.exists("/tmp/logflow-pickle-ran"):
        os.remove("/tmp/logflow-pickle-ran")
    tasks.huey.flush()
    tasks.huey.storage.enqueue(pickle.dumps(Exploit()))
    with pytest.raises(Exception):
        tasks.huey.dequeue()
    assert not os.path.exists("/tmp/logflow-pickle-ran")


def test_an_outage_pauses_the_whole_writer_with_growing_delays(client, key, project, bound, caplog):
    # Every batch fails while the folder is blocked; the writer, not each batch, backs off.
    tasks.configure(bound.replace(retry_base_seconds=0.2, retry_max_seconds=5))
    os.makedirs(bound.log_dir)
    blocker = os.path.join(bound.log_dir, str(project.id))
    open(blocker, "w").close()
    for number in range(5):
        post_logs(client, key, [{"message": "m%d" % number}])
    with caplog.at_level(logging.ERROR, logger="logflow"):
        tasks.drain.call_local("file")
        assert tasks.runtime.spool.paused("file") > 0
        assert tasks.drain.call_local("file") == 0  # paused: claims nothing
    assert caplog.text.count("file writer failed") == 1
    assert "1 failures in a row" in caplog.text
    delays = []
    for _ in range(3):
        wait_for(lambda: not tasks.runtime.spool.paused("file"), timeout=10, message="the pause to end")
        tasks.drain.call_local("file")
        delays.append(tasks.runtime.spool.paused("file"))
    assert "4 failures in a row" in caplog.text
    assert delays[-1] > delays[0]  # 0.2·2³·jitter > 0.2·2·jitter
    os.remove(blocker)
    wait_for(lambda: not tasks.runtime.spool.paused("file"), timeout=10, message="the pause to end")
    wait_for(lambda: tasks.drain.call_local("file") == 0 and tasks.runtime.spool.depth("file") == 0,
             timeout=10, message="the file writer to catch up")
    assert len(file_records(bound.log_dir)) == 5


def test_a_request_wakes_the_writer_to_gather_a_batch(client, key, bound):
    tasks.huey.flush()
    post_logs(client, key, [{"message": "first"}])
    post_logs(client, key, [{"message": "second"}])  # the writers are awake already
    assert sorted((task.args, task.kwargs) for task in tasks.huey.pending()) == [
        (("db",), {"woken": True}), (("file",), {"woken": True})]
    tasks.huey.flush()


def test_a_woken_writer_writes_the_requests_of_its_wait_in_one_batch(client, key, bound):
    # Generous: the 20 requests below take milliseconds, and must land within the wait.
    tasks.configure(bound.replace(batch_wait_seconds=5))
    post_logs(client, key, [{"message": "m0"}])
    woken = threading.Thread(target=tasks.drain.call_local, args=("db",), kwargs={"woken": True})
    woken.start()
    for number in range(1, 21):
        post_logs(client, key, [{"message": "m%d" % number}])
    woken.join()
    assert len(stored_logs()) == 21
    counters = tasks.runtime.spool.counters()
    assert counters["write_seconds_count|writer=db"] == 1
    tasks.huey.flush()


def test_importing_binds_nothing_and_the_consumer_binds_the_environment_first(tmp_path):
    environment = dev_mode_environment(tmp_path, PYTHONPATH=ROOT)
    consumer = [HUEY_CONSUMER, "tasks.huey", "--worker-type", "thread", "--workers", "2", "--graceful-signal", "TERM"]

    # A setting nothing could use: importing reads no setting and creates no file.
    imported = subprocess.run([sys.executable, "-c", "import tasks, logflow, manage; print(tasks.runtime.settings)"],
                              cwd=tmp_path, env={**environment, "LOGFLOW_MAX_RECORDS": "0"},
                              capture_output=True, text=True, timeout=60)
    assert (imported.returncode, imported.stdout, os.listdir(tmp_path)) == (0, "None\n", []), imported.stderr
    # The consumer meets it before its workers start, and stops.
    refused = subprocess.run(consumer, cwd=tmp_path, env={**environment, "LOGFLOW_MAX_RECORDS": "0"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and refused.stderr.splitlines()[-1].endswith(
        "LOGFLOW_MAX_RECORDS: must be a whole number of 1 or more, not 0"), refused.stderr[-2000:]

    # With good settings its workers' startup hooks find them bound, the logger's level too.
    with open(tmp_path / "consumer.log", "w+") as output:
        process = subprocess.Popen(consumer, cwd=tmp_path, env={**environment, "LOGFLOW_LOG_LEVEL": "INFO"},
                                   stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: "consumer started" in (tmp_path / "consumer.log").read_text(), timeout=30,
                     message="the consumer to start")
        finally:
            process.terminate()
            process.wait(timeout=30)
        logged = (tmp_path / "consumer.log").read_text()
    assert process.returncode == 0, logged
    assert "hook" not in logged and "Traceback" not in logged, logged
    assert logged.count("logflow: consumer worker stopped") == 2, logged


@pytest.mark.parametrize("url, shown", [
    ("redis://logflow:s3cret@10.0.0.1:6379/0", "redis://10.0.0.1:6379/0"),
    # Unencoded / and ? in the password: nothing after them is taken for the path or the query.
    ("redis://:se/cret@10.0.0.1:6379/2", "redis://10.0.0.1:6379/2"),
    ("rediss://user:se?cret@h:6380/1?ssl_cert_reqs=none", "rediss://h:6380/1"),
    ("postgresql://logflow:pw@db:5432/logflow?sslmode=require", "postgresql://db:5432/logflow"),
    ("unix:///run/redis/redis.sock?db=0", "unix:///run/redis/redis.sock"),
])
def test_a_store_url_is_logged_without_its_user_password_or_query(url, shown):
    assert tasks.without_password(url) == shown
