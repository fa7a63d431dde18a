"""The recipes of docs/shippers.md, run end to end: each shipper as its own process against a live LogFlow.

Each test reads its recipe from the document (the code block after the
`<!-- recipe: NAME -->` marker), so the text a reader copies is the text tested.
A test skips when its shipper is not installed; what to install is in the document.
"""
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest
from werkzeug.serving import make_server

from conftest import base_settings
from helpers import drain_all, stored_logs, wait_for
from processes import ROOT, Process, free_port

DOCUMENT = os.path.join(ROOT, "docs", "shippers.md")
# A shipper flushes a batch after at most a few seconds; the rest is start-up on a busy machine.
DELIVERY_TIMEOUT = 60


def recipe(name):
    """The code block that follows `<!-- recipe: name -->` in docs/shippers.md."""
    with open(DOCUMENT, encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(r"<!-- recipe: %s -->\s*```[\w-]*\n(.*?)```" % re.escape(name), text, re.S)
    assert match, "no recipe %r in %s" % (name, DOCUMENT)
    return match.group(1)


def require(program):
    """The path of an installed program, or skip the test."""
    path = shutil.which(program)
    if path is None:
        pytest.skip("%s is not installed (see docs/shippers.md)" % program)
    return path


@pytest.fixture
def settings(tmp_path):
    """Dev mode only: the shippers are under test here, not the backends."""
    return base_settings(tmp_path)


@pytest.fixture
def logflow(app, key):
    """LogFlow served over HTTP on 127.0.0.1 from a thread; yields the environment the recipes read."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield dict(os.environ, LOGFLOW_URL="http://127.0.0.1:%d" % server.server_port, LOGFLOW_KEY=key)
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def processes():
    """Start shippers with start(name, argv, env); each is stopped at the end and its output shown."""
    started = []

    def start(name, argv, env, log_path):
        process = Process(name, argv, env, log_path)
        started.append(process)
        return process
    yield start
    for process in started:
        process.stop()
        print("---- %s (exit %s)\n%s" % (process.name, process.popen.returncode, process.tail()))


def wait_stored(count, sender, shipper=None):
    """Drain the spool as a consumer would until count records are stored; returns them by message.

    shipper, a Process that should keep running, fails the wait with its output if it exits.
    """
    def check():
        if shipper is not None:
            shipper.check_alive()
        drain_all()
        rows = stored_logs()
        return rows if len(rows) >= count else None
    rows = wait_for(check, timeout=DELIVERY_TIMEOUT, interval=0.2,
                    message="%d records from %s" % (count, sender))
    assert len(rows) == count, [row["message"] for row in rows]
    return {row["message"]: row for row in rows}


def send_lines(port, lines, timeout=30):
    """Send newline-framed lines over TCP, retrying the connection until the listener is up."""
    def connect():
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            return None
    with wait_for(connect, timeout=timeout, interval=0.1, message="port %d to listen" % port) as sock:
        sock.sendall("".join(line + "\n" for line in lines).encode())


def start_syslog_ng(processes, environment, tmp_path, port, includes):
    """syslog-ng in the foreground on a configuration whose s_src listens on TCP port, then includes."""
    syslog_ng = require("syslog-ng")
    paths = []
    for number, text in enumerate(includes):
        paths.append(tmp_path / ("include-%d.conf" % number))
        paths[-1].write_text(text)
    # Debian's syslog-ng.conf defines s_src (the local system's logs); here it is a TCP listener,
    # and the senders' host names are kept as a relay would keep them.
    (tmp_path / "syslog-ng.conf").write_text(
        '@version: 3.38\n'
        'options { keep-hostname(yes); };\n'
        'source s_src { network(ip("127.0.0.1") port(%d) transport("tcp")); };\n' % port
        + "".join('@include "%s"\n' % path for path in paths))
    return processes("syslog-ng", [
        syslog_ng, "--foreground", "--no-caps", "--cfgfile", str(tmp_path / "syslog-ng.conf"),
        "--persist-file", str(tmp_path / "syslog-ng.persist"), "--pidfile", str(tmp_path / "syslog-ng.pid"),
        "--control", str(tmp_path / "syslog-ng.ctl"), "--stderr"], environment, tmp_path / "syslog-ng.log")


def test_syslog_ng_http_destination(logflow, processes, tmp_path):
    """syslog-ng's http() destination batches syslog messages as a JSON array; severities map to levels."""
    port = free_port()
    shipper = start_syslog_ng(processes, logflow, tmp_path, port, [recipe("syslog-ng")])
    send_lines(port, ["<11>2026-11-28T01:00:00+00:00 web1 billing[4242]: payment failed",
                      "<14>2026-11-28T01:00:01+00:00 web1 billing[4242]: payment retried",
                      "<12>2026-11-28T03:00:02+02:00 web2 cron: disk at 91%"])
    rows = wait_stored(3, "syslog-ng", shipper)
    assert rows["payment failed"]["level"] == "ERROR"
    assert rows["payment retried"]["level"] == "INFO"
    assert rows["disk at 91%"]["level"] == "WARN"
    assert rows["payment failed"]["metadata"] == {"host": "web1", "program": "billing", "pid": "4242",
                                                  "facility": "user"}
    assert rows["payment failed"]["timestamp"].isoformat() == "2026-11-28T01:00:00"
    assert rows["disk at 91%"]["timestamp"].isoformat() == "2026-11-28T01:00:02"


def test_docker_syslog_format_into_syslog_ng(logflow, processes, tmp_path):
    """Lines as Docker's syslog driver sends them (rfc5424micro over TCP) reach LogFlow through syslog-ng."""
    port = free_port()
    # The recipe listens on 601; a test takes a free port instead.
    docker_source = recipe("syslog-ng-docker")
    assert "port(601)" in docker_source
    shipper = start_syslog_ng(processes, logflow, tmp_path, free_port(), [
        recipe("syslog-ng"), docker_source.replace("port(601)", "port(%d)" % port)])
    # Docker's format: <PRI>1 TIMESTAMP HOST TAG DAEMON-PID TAG - LINE; stdout is daemon.info, stderr daemon.err.
    send_lines(port, ["<30>1 2026-11-28T01:00:00.250000Z dockerhost web-1 812 web-1 - GET /health 200",
                      "<27>1 2026-11-28T01:00:01.500000+01:00 dockerhost web-1 812 web-1 - "
                      "Traceback (most recent call last):"])
    rows = wait_stored(2, "syslog-ng", shipper)
    request, error = rows["GET /health 200"], rows["Traceback (most recent call last):"]
    assert (request["level"], error["level"]) == ("INFO", "ERROR")
    assert request["timestamp"].isoformat() == "2026-11-28T01:00:00.250000"
    assert error["timestamp"].isoformat() == "2026-11-28T00:00:01.500000"
    assert request["metadata"] == {"host": "dockerhost", "program": "web-1", "pid": "812",
                                   "facility": "daemon"}


def node_environment(environment, *packages):
    """The environment with NODE_PATH where the packages are (npm's global folder by default), or skip."""
    node = require("node")
    node_path = environment.get("NODE_PATH")
    if not node_path and shutil.which("npm"):
        node_path = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True).stdout.strip()
    environment = dict(environment, NODE_PATH=node_path or "")
    for package in packages:
        found = subprocess.run([node, "-e", "require.resolve(%r)" % package], env=environment,
                               capture_output=True)
        if found.returncode != 0:
            pytest.skip("Node package %s is not installed (npm install -g %s)" % (package, package))
    return environment


def run_node_app(environment, tmp_path, logger, app):
    """Run app (JavaScript that requires ./logger) with node until it ends on its own."""
    (tmp_path / "logger.js").write_text(logger)
    (tmp_path / "app.js").write_text(app)
    finished = subprocess.run(["node", "app.js"], cwd=tmp_path, env=environment, capture_output=True,
                              text=True, timeout=DELIVERY_TIMEOUT)
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_pino_http_send(logflow, tmp_path):
    """pino through pino-http-send: an NDJSON batch, sent before the process ends; numeric levels map."""
    environment = node_environment(logflow, "pino", "pino-http-send")
    run_node_app(environment, tmp_path, recipe("pino"), """
const logger = require('./logger');
logger.info({ order: 7 }, 'order placed');
logger.warn('stock low');
logger.error({ card: 'declined' }, 'payment failed');
""")
    rows = wait_stored(3, "pino")
    assert {message: row["level"] for message, row in rows.items()} == {
        "order placed": "INFO", "stock low": "WARN", "payment failed": "ERROR"}
    metadata = rows["order placed"]["metadata"]
    assert metadata["order"] == 7 and metadata["pid"] > 0 and metadata["hostname"]
    assert rows["payment failed"]["metadata"]["card"] == "declined"


def test_winston_http_transport(logflow, tmp_path):
    """winston's Http transport: a JSON array, sent before the process ends; syslog level names map."""
    environment = node_environment(logflow, "winston")
    run_node_app(environment, tmp_path, recipe("winston"), """
const logger = require('./logger');
logger.info('order placed', { order: 7 });
logger.warning('stock low');
logger.crit('payment failed');
""")
    rows = wait_stored(3, "winston")
    assert {message: row["level"] for message, row in rows.items()} == {
        "order placed": "INFO", "stock low": "WARN", "payment failed": "CRITICAL"}
    assert rows["order placed"]["metadata"] == {"order": 7}
