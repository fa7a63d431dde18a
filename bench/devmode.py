"""Dev mode end to end: gunicorn and a consumer on SQLite, as the Procfile runs them.

python3 bench/devmode.py [RECORDS]  — sends RECORDS (default 50,000) in 100-record
requests from 4 threads and prints how fast they were accepted and how fast
they reached the SQLite table and the daily files. Everything runs in a
temporary folder and stops at the end.
"""
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from helpers import wait_for  # noqa: E402
from processes import HUEY_CONSUMER, free_port  # noqa: E402
import web  # noqa: E402  (bench/web.py: the Procfile's web line)


def stored(folder):
    """(rows in the SQLite logs table, lines in the daily files)."""
    connection = sqlite3.connect(os.path.join(folder, "data", "logflow.db"))
    try:
        rows = connection.execute("SELECT count(*) FROM logs").fetchone()[0]
    finally:
        connection.close()
    lines = 0
    for directory, _, names in os.walk(os.path.join(folder, "logs")):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                lines += sum(1 for _ in handle)
    return rows, lines


def main(records=50_000, threads=4):
    """Run the measurement and print one line."""
    folder = tempfile.mkdtemp(prefix="logflow-devbench-")
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    env.update(LOGFLOW_DATA_DIR=os.path.join(folder, "data"), LOGFLOW_LOG_DIR=os.path.join(folder, "logs"))
    key = subprocess.run([sys.executable, "manage.py", "add-project", "dev"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    processes = [
        subprocess.Popen(web.argv(), cwd=ROOT, env=web.environment(env, port), stderr=subprocess.DEVNULL),
        # The Procfile's worker line: SQLite is polled, so --delay/--max-delay matter here.
        subprocess.Popen([sys.executable, HUEY_CONSUMER, "tasks.huey", "--worker-type", "thread",
                          "--workers", "4", "--graceful-signal", "TERM", "--max-delay", "0.5",
                          "--delay", "0.05", "--quiet"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)]
    url = "http://127.0.0.1:%d" % port
    try:
        wait_for(lambda: _answers(url + "/healthz"), timeout=30, message="gunicorn")
        body = json.dumps([{"message": "GET /api/users/%d 200 12ms" % n, "level": "info",
                            "metadata": {"user_id": n}} for n in range(100)]).encode()

        def send(requests):
            for _ in range(requests):
                request = urllib.request.Request(url + "/logs", data=body, headers={
                    "X-API-Key": key, "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status == 202
        started = time.monotonic()
        senders = [threading.Thread(target=send, args=(records // 100 // threads,)) for _ in range(threads)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        sent = time.monotonic() - started
        total = records // 100 // threads * threads * 100
        wait_for(lambda: stored(folder) == (total, total), timeout=300, interval=0.1,
                 message="every record in SQLite and the files")
        done = time.monotonic() - started
        print("dev mode (SQLite): %d records accepted in %.1f s (%.0f records/s); all in the table and"
              " the files after %.1f s: %.0f records/s end to end" % (total, sent, total / sent, done, total / done))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def _answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
