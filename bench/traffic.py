"""The load the benchmark drives: wrk and its Lua scripts, the measurements made with them, and the COPY ceiling."""
import datetime
import io
import json
import os
import re
import signal
import subprocess
import time
import uuid

import psycopg2

from servers import BENCH, log_record  # first: it puts the repository's root on sys.path
from meters import Meter
import records  # the ids LogFlow makes, for the COPY ceiling's rows


# ---------------------------------------------------------------- wrk

def wrk(url, script, args, seconds, connections, threads, latency=False):
    """Run wrk for `seconds`; returns its parsed summary."""
    argv = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s",
            "-s", os.path.join(BENCH, script)] + (["--latency"] if latency else []) + [url, "--", *args]
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return parse_wrk(output)


def parse_wrk(output):
    """Requests, seconds, non-2xx, socket errors and latency percentiles (ms) from wrk's output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    seconds = float(done.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[done.group(3)]
    result = {"requests": int(done.group(1)), "seconds": seconds,
              "non2xx": int(re.search(r"Non-2xx or 3xx responses: (\d+)", output).group(1))
              if "Non-2xx" in output else 0,
              "socket_errors": sum(map(int, re.findall(r"(?:connect|read|write|timeout) (\d+)", output)))}
    units = {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}
    for percent, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M):
        result["p" + percent] = float(value) * units[unit]
    return result


def send_exact(url, body, key, requests, connections, threads, cap_seconds=900):
    """POST `body` until `requests` got 202 (exact.lua); returns the totals of its DONE lines and the seconds taken."""
    assert requests % threads == 0, "requests must divide evenly among wrk threads"
    argv = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % cap_seconds, "--timeout", "30s",
            "-s", os.path.join(BENCH, "exact.lua"), url + "/logs", "--", body, key, str(requests // threads)]
    start = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    totals, done = {"accepted": 0, "refused": 0, "dropped": 0}, 0
    try:
        for line in process.stdout:
            if line.startswith("DONE"):
                for name, value in (part.split("=") for part in line.split()[1:]):
                    totals[name] += int(value)
                done += 1
                if done == threads:
                    break
        seconds = time.monotonic() - start
        process.send_signal(signal.SIGINT)  # wrk's main thread sleeps until -d; SIGINT wakes it
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if done < threads:
        raise RuntimeError("wrk stopped before every request got its 202 (cap %d s)" % cap_seconds)
    return totals, seconds


# ---------------------------------------------------------------- measurements

def throughput(stack, base_url, body, key, seconds, per_request):
    """Requests/s, records/s accepted (2xx only), p50 and p99 of one wrk run, and the CPU it took."""
    meter = Meter(stack)
    result = wrk(base_url + "/logs", "post.lua", [body, key], seconds,
                 stack.args.connections, stack.args.wrk_threads, latency=True)
    result["cpu"] = meter.stop()
    accepted = result["requests"] - result["non2xx"]
    result.update(req_s=result["requests"] / result["seconds"],
                  records_s=accepted * per_request / result["seconds"])
    # LogFlow's backlog would take CPU from the next measurement.
    stack.wait_drained()
    stack.spool.client.delete("hello:queue")
    return result


def paced(stack, base_url, body, key, seconds, rate):
    """p50 and p99 of single-record POSTs sent at about `rate` requests/s (paced.lua), and the rate reached."""
    pause_ms = 1000.0 * stack.args.connections / rate
    result = wrk(base_url + "/logs", "paced.lua", [body, key, "%.2f" % pause_ms], seconds,
                 stack.args.connections, stack.args.wrk_threads, latency=True)
    result["req_s"] = result["requests"] / result["seconds"]
    stack.wait_drained()
    return result


def end_to_end(stack, name, body, per_request, records, sampler=None):
    """Send `records` records, then poll until all are in PostgreSQL and in the files; records/s of the whole."""
    project_id, key = stack.add_project(name)
    wal_before, (table_before, _) = stack.wal_position(), stack.disk_bytes(project_id)
    meter = Meter(stack)
    if sampler:
        sampler.start()
    sent, sending = send_exact(stack.logflow_url, body, key, records // per_request,
                               stack.args.connections, stack.args.wrk_threads)
    finished = stack.wait_drained()
    cpu = meter.stop()
    if sampler:
        sampler.stop()
    rows, lines = stack.stored(project_id)
    table_after, file_bytes = stack.disk_bytes(project_id)
    # What a stored record costs the disks (scaling.md): WAL written, table growth, daily-file bytes.
    disk = {"wal": stack.wal_position() - wal_before, "table": table_after - table_before, "files": file_bytes}
    accepted = sent["accepted"] * per_request  # records answered 202: each must be stored
    seconds = finished - meter.start["wall"]
    return {"records": accepted, "seconds": seconds, "records_s": accepted / seconds,
            "sending_s": sending, "accepted_s": accepted / sending, "refused": sent["refused"],
            "dropped": sent["dropped"], "rows": rows, "lines": lines,
            "lost_db": max(0, accepted - rows), "lost_files": max(0, accepted - lines),
            # Stored beyond the 202s: requests whose answer never reached wrk (dropped connections).
            "unanswered_stored": max(rows, lines) - accepted, "cpu": cpu, "disk": disk}


def copy_ceiling(stack, rows):
    """Raw COPY (psycopg2 copy_expert) of log-shaped rows into a scratch table shaped like logs; rows/s."""
    project_id, _ = stack.add_project("copy-%s" % uuid.uuid4().hex[:8])
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat()
    lines = []
    for number in range(rows):
        record = log_record(number)
        lines.append("\t".join([records.random_uuid(), str(project_id), "INFO", record["message"],
                                json.dumps(record["metadata"]), now, now]))
    data = ("\n".join(lines) + "\n").encode()
    with psycopg2.connect(stack.db_url) as conn, conn.cursor() as cur:
        # Same columns, primary key, index and foreign key as logs.
        cur.execute("DROP TABLE IF EXISTS bench_copy;"
                    " CREATE TABLE bench_copy (LIKE logs INCLUDING ALL);"
                    " ALTER TABLE bench_copy ADD FOREIGN KEY (project_id) REFERENCES projects (id)")
        conn.commit()
        meter = Meter(stack)
        start = time.monotonic()
        cur.copy_expert("COPY bench_copy (id, project_id, level, message, metadata, timestamp,"
                        " received_at) FROM STDIN", io.BytesIO(data))
        conn.commit()
        seconds = time.monotonic() - start
        cpu = meter.stop()
        cur.execute("DROP TABLE bench_copy")
    return {"rows": rows, "seconds": seconds, "records_s": rows / seconds, "cpu": cpu}
