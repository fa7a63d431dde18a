"""Helpers shared by the tests: post records, drain the spool, read back what was stored."""
import contextlib
import glob
import json
import os
import threading
import time

import orjson

from werkzeug.serving import make_server

import config
import models
import spool
import tasks


def post_logs(client, key, body, headers=None, content_type="application/json"):
    """POST a body (bytes, or anything JSON) to /logs with the key; returns the response."""
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    all_headers = {"X-API-Key": key} if key else {}
    all_headers.update(headers or {})
    return client.post("/logs", data=body, headers=all_headers, content_type=content_type)


def drain_all():
    """Write everything the spool holds that is due, as a consumer would, in this process."""
    total = 0
    for writer in config.WRITERS:
        for shard in range(tasks.runtime.spool.shards):
            while True:
                batch = tasks.runtime.spool.claim(writer, tasks.runtime.settings.batch_bytes, shard)
                if batch is None:
                    break
                total += tasks.write_batch(writer, batch, shard)
    return total


def stored_logs(project_id=None):
    """Every row of the logs table (of one project), as dicts, oldest first."""
    with models.database.connection_context():
        query = models.Log.select().order_by(models.Log.timestamp, models.Log.id)
        if project_id is not None:
            query = query.where(models.Log.project == project_id)
        return [dict(row.__data__, id=str(row.id)) for row in query]


def file_records(log_dir, project_id="*"):
    """Every JSON line in the daily files, as dicts.

    A last line without its newline is not a stored record: a writer is
    appending it now, or died mid-write and the next one cuts it and writes
    the batch again (storage.FileWriter). Read while consumers run, it is skipped.
    """
    lines = []
    for path in sorted(glob.glob(os.path.join(log_dir, str(project_id), "*.log"))):
        with open(path, "rb") as handle:
            lines.extend(json.loads(line) for line in handle if line.endswith(b"\n"))
    return lines


def wait_for(check, timeout=30.0, interval=0.05, message="condition"):
    """Poll check() until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, message))
        time.sleep(interval)


def break_spool(settings, tmp_path):
    """Point the spool at a store that cannot answer: Redis on a closed port, or SQLite under a file."""
    if settings.redis_url:
        tasks.runtime.spool = spool.open_spool(settings.replace(redis_url="redis://127.0.0.1:1/0"))
    else:
        (tmp_path / "blocked").write_text("a file where the data folder should be")
        tasks.runtime.spool = spool.open_spool(settings.replace(data_dir=str(tmp_path / "blocked")))


@contextlib.contextmanager
def serve(app):
    """A WSGI app served over real HTTP on a free port of 127.0.0.1, from a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
