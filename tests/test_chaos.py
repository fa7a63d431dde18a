"""Fault tests that break several things at once; here so far, a crash of PostgreSQL right after a write."""
import client
import models
import tasks
from conftest import base_settings
from processes import query
from storage import DatabaseWriter
from test_faults import own_postgres  # noqa: F401 (fixture)


def test_rows_written_survive_a_postgres_crash_right_after(tmp_path, own_postgres):  # noqa: F811
    """Rows the database writer has written, so that their batch leaves the spool, outlive a crash of PostgreSQL.

    The test cluster runs with synchronous_commit=off, a common tuning, under
    which COMMIT returns before its WAL is written; a consumer then
    acknowledged batches that an immediate stop of PostgreSQL (a crash, as far
    as the WAL knows) took with it.
    """
    tasks.configure(base_settings(tmp_path).replace(database_url=own_postgres.url))
    try:
        models.create_tables()
        (setting,), = query(own_postgres.url, "SHOW synchronous_commit")
        assert setting == "off"  # the server setting the writer must not rely on
        with models.database.connection_context():
            project = models.Project.create(name="crash")
        at = "2026-11-28T00:00:00.000000Z"
        items = [(project.id, at, {"id": client.time_ordered_id(), "level": "INFO", "message": "row %d" % n,
                                   "metadata": {}, "timestamp": at}) for n in range(100)]
        DatabaseWriter().write(items)
        own_postgres.stop(mode="immediate")  # no shutdown checkpoint: what the WAL on disk holds survives
        own_postgres.start()
        assert query(own_postgres.url, "SELECT count(*) FROM logs") == [(100,)]
    finally:
        models.database.obj.close_all()
