"""The models' database binding: what dev mode's processes do to a new SQLite file at once."""
import multiprocessing

from conftest import base_settings

import models


def test_processes_creating_a_new_database_at_once_all_succeed(tmp_path):
    # Dev mode's gunicorn workers and consumer make logflow.db's tables at the
    # same moment. Each switched the new file to WAL, and SQLite refused some
    # at once ("database is locked", without its busy timeout): 6 rounds in
    # 100 with 3 processes.
    context = multiprocessing.get_context("fork")
    for round_number in range(20):
        settings = base_settings(tmp_path / ("round %d" % round_number))
        barrier = context.Barrier(8)
        processes = [context.Process(target=_create_tables, args=(settings, barrier)) for _ in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [process.exitcode for process in processes] == [0] * 8, "round %d" % round_number
        models.bind_database(settings)
        with models.database.connection_context():
            assert models.database.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)
            assert models.Project.select().count() == 8  # one per process: every one wrote


def _create_tables(settings, barrier):
    models.bind_database(settings)
    barrier.wait(30)
    models.create_tables()
    with models.database.connection_context():
        models.Project.create(name="process %d" % multiprocessing.current_process().pid)
