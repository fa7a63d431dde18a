"""The writers: idempotent database batches, whole JSON lines in daily files."""
import json
import multiprocessing
import os
import resource
import signal
import uuid

import pytest

import spool
import storage
from helpers import file_records, stored_logs


def items(*payloads):
    """The decoded items of spooled payloads, as the consumer hands them to a writer."""
    return spool.decode(payloads)


def payload(project_id, messages, received_at="2026-11-27T12:00:00.000000Z"):
    """A spooled payload as the web process writes it."""
    return spool.encode(project_id, received_at, [
        {"id": str(uuid.uuid4()), "level": "INFO", "message": message, "metadata": {"n": index},
         "timestamp": "2026-11-27T11:59:00.000000Z"} for index, message in enumerate(messages)])


def test_database_writer_skips_ids_it_already_holds(bound, project):
    batch = items(payload(project.id, ["a", "b"]), payload(project.id, ["c"]))
    writer = storage.DatabaseWriter()
    assert writer.write(batch) == 3
    assert writer.write(batch) == 3  # a redelivered batch
    rows = stored_logs(project.id)
    assert sorted(row["message"] for row in rows) == ["a", "b", "c"]
    assert rows[0]["received_at"].isoformat() == "2026-11-27T12:00:00"


def test_database_writer_stores_text_that_copy_would_read_as_escapes(bound, project):
    awkward = ["", "\\N", "a\tb\nc\rd", "back\\slash \\t", "\\.", "é \u2028 \U0001f600"]
    batch = spool.encode(project.id, "2026-11-27T12:00:00.000000Z", [
        {"id": str(uuid.uuid4()), "level": "INFO", "message": text, "metadata": {text: [text, "\\"]},
         "timestamp": "2026-11-27T11:59:00.000000Z"} for text in awkward])
    storage.DatabaseWriter().write(items(batch))
    rows = stored_logs(project.id)
    assert sorted(row["message"] for row in rows) == sorted(awkward)
    assert all(row["metadata"] == {row["message"]: [row["message"], "\\"]} for row in rows)


def test_database_writer_stores_the_new_records_of_a_partly_stored_batch(bound, project):
    first, second = payload(project.id, ["a", "b"]), payload(project.id, ["c"])
    writer = storage.DatabaseWriter()
    writer.write(items(first))
    # A batch merged from a redelivered request and a new one.
    assert writer.write(items(first, second)) == 3
    assert sorted(row["message"] for row in stored_logs(project.id)) == ["a", "b", "c"]


def test_database_writer_is_all_or_nothing(bound, project):
    good = payload(project.id, ["fine"])
    unknown_project = payload(project.id + 1000, ["orphan"])
    with pytest.raises(Exception):
        storage.DatabaseWriter().write(items(good, unknown_project))
    assert stored_logs() == []


def test_file_writer_lines(tmp_path):
    writer = storage.FileWriter(str(tmp_path))
    assert writer.write(items(payload(7, ["one", "two"]))) == 2
    lines = (tmp_path / "7" / "2026-11-27.log").read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["one", "two"]
    assert set(json.loads(lines[0])) == {"id", "project_id", "timestamp", "level", "message",
                                         "metadata", "received_at"}


def test_file_lines_hold_the_record_its_project_and_received_at(tmp_path):
    record = {"id": str(uuid.uuid4()), "level": "WARN", "message": 'a "quoted" line\nand ünïcode',
              "metadata": {"nested": {"list": [1, 2.5, None]}}, "timestamp": "2026-11-26T23:59:59.999999Z"}
    storage.FileWriter(str(tmp_path)).write(items(spool.encode(7, "2026-11-27T00:00:01.000000Z", [record])))
    # The record's day, not the day it was received.
    (line,) = (tmp_path / "7" / "2026-11-26.log").read_text().splitlines()
    assert json.loads(line) == {**record, "project_id": 7, "received_at": "2026-11-27T00:00:01.000000Z"}


def test_concurrent_appends_never_interleave(tmp_path):
    # Lines far larger than a pipe buffer, written by several processes at once.
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_append_many, args=(str(tmp_path), n)) for n in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    records = file_records(str(tmp_path), 1)
    assert len(records) == 4 * 20 * 5
    assert all(len(record["message"]) == 50_000 for record in records)


def _append_many(log_dir, number):
    writer = storage.FileWriter(log_dir)
    for _ in range(20):
        writer.write(items(payload(1, [str(number) * 50_000] * 5)))


def test_a_failed_append_leaves_no_torn_line(tmp_path):
    path = tmp_path / "file.log"
    storage.append(str(path), b'{"whole": 1}\n')
    # A real short write: the process may not grow the file past 100 bytes.
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        try:
            storage.append(str(path), b'{"torn": "' + b"x" * 500 + b'"}\n')
        except OSError:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert path.read_bytes() == b'{"whole": 1}\n'


def test_a_torn_line_left_by_a_killed_writer_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "file.log"
    path.write_bytes(b'{"whole": 1}\n{"whole": 2}\n{"torn": "abc')
    storage.append(str(path), b'{"redelivered": 1}\n')
    assert path.read_bytes() == b'{"whole": 1}\n{"whole": 2}\n{"redelivered": 1}\n'
    only_torn = tmp_path / "torn.log"
    only_torn.write_bytes(b"x" * 100_000)
    storage.append(str(only_torn), b"{}\n")
    assert only_torn.read_bytes() == b"{}\n"
