"""The recipes of docs/shippers.md, run end to end: each shipper as its own process against a live LogFlow.

Each test reads its recipe from the document (the code block after the
`<!-- recipe: NAME -->` marker), so the text a reader copies is the text tested.
A test skips when its shipper is not installed; what to install is in the document.
"""
import glob
import json
import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import base_settings
from helpers import drain_all, post_logs, serve, stored_logs, wait_for
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
def settings(request, tmp_path):
    """Dev mode only, as the shippers are under test here, not the backends; a test may override fields."""
    return base_settings(tmp_path).replace(**getattr(request, "param", {}))


class StatusLog:
    """WSGI middleware noting the status of every response, to see the refusals a shipper got."""

    def __init__(self, app):
        self.app, self.statuses, self.url = app, [], None

    def __call__(self, environ, start_response):
        def note(status, headers, exc_info=None):
            self.statuses.append(int(status.split()[0]))
            return start_response(status, headers, exc_info)
        return self.app(environ, note)


@pytest.fixture
def served(app):
    """LogFlow's app served over HTTP on 127.0.0.1 from a thread; yields its StatusLog."""
    status_log = StatusLog(app)
    with serve(status_log) as status_log.url:
        yield status_log


@pytest.fixture
def logflow(served, key):
    """The environment the recipes read: LOGFLOW_URL of the served LogFlow and a project's LOGFLOW_KEY."""
    return dict(os.environ, LOGFLOW_URL=served.url, LOGFLOW_KEY=key)


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


def fill_queue(client, key):
    """Queue three records, which fills a queue of max_queue=3: the next request gets 503 until a drain."""
    queued = [{"message": "queued %d" % number} for number in range(3)]
    assert post_logs(client, key, queued).status_code == 202


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


@pytest.mark.parametrize("settings", [{"max_queue": 3}], indirect=True)
def test_syslog_ng_retries_while_the_queue_is_full(logflow, served, processes, client, key, tmp_path):
    """A batch refused with 503 (queue full) is sent again and stored once the queue has room."""
    fill_queue(client, key)
    port = free_port()
    shipper = start_syslog_ng(processes, logflow, tmp_path, port, [recipe("syslog-ng")])
    send_lines(port, ["<11>2026-11-28T01:00:00+00:00 web1 billing[4242]: payment failed"])
    wait_for(lambda: shipper.check_alive() or 503 in served.statuses, timeout=DELIVERY_TIMEOUT,
             message="LogFlow to refuse syslog-ng's batch")
    rows = wait_stored(3 + 1, "syslog-ng", shipper)
    assert rows["payment failed"]["level"] == "ERROR"
    assert served.statuses[-1] == 202 and served.statuses.count(202) == 1, served.statuses


def rsyslog_modules(rsyslogd):
    """-M and the module folder of an rsyslogd unpacked outside /usr (CI: beside syslog-ng, which Debian's conflicts with)."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(rsyslogd)))  # <root>/usr
    if prefix == "/usr":
        return []
    return ["-M", glob.glob(os.path.join(prefix, "lib", "*", "rsyslog"))[0]]


def test_rsyslog_recipe_with_omfile(logflow, processes, client, key, tmp_path):
    """rsyslog's template and rulesets, with omfile for omhttp (Debian has none): LogFlow stores what it renders."""
    rsyslogd = require("rsyslogd")
    port, rendered = free_port(), tmp_path / "rendered.json"

    def to_file(action):
        template = re.search(r'template="(\w+)"', action.group(0)).group(1)
        return 'action(type="omfile" file="%s" template="%s")' % (rendered, template)
    configuration, swapped = re.subn(r'action\(type="omhttp".*?\)\n', to_file,
                                     recipe("rsyslog").replace('module(load="omhttp")\n', ""), flags=re.S)
    assert swapped == 2, configuration
    (tmp_path / "rsyslog.conf").write_text(
        'global(workDirectory="%s")\nmodule(load="imtcp")\n'
        'input(type="imtcp" address="127.0.0.1" port="%d")\n%s' % (tmp_path, port, configuration))
    shipper = processes("rsyslogd", [rsyslogd, "-n", "-f", str(tmp_path / "rsyslog.conf"),
                                     "-i", str(tmp_path / "rsyslogd.pid")] + rsyslog_modules(rsyslogd),
                        logflow, tmp_path / "rsyslogd.log")
    send_lines(port, ["<11>2026-11-28T01:00:00.250+00:00 web1 billing[4242]: payment failed",
                      "<12>2026-11-28T03:00:02+02:00 web2 cron: disk at 91%"])

    def rendered_records():
        shipper.check_alive()
        lines = rendered.read_text().splitlines() if rendered.exists() else []
        return [json.loads(line) for line in lines] if len(lines) == 2 else None
    batch = wait_for(rendered_records, timeout=DELIVERY_TIMEOUT, message="rsyslog to write two records")
    assert post_logs(client, key, batch).json == {"accepted": 2, "rejected": 0, "errors": []}
    rows = wait_stored(2, "rsyslog")
    assert rows["payment failed"]["level"] == "ERROR" and rows["disk at 91%"]["level"] == "WARN"
    assert rows["payment failed"]["timestamp"].isoformat() == "2026-11-28T01:00:00.250000"
    assert rows["disk at 91%"]["timestamp"].isoformat() == "2026-11-28T01:00:02"
    assert rows["payment failed"]["metadata"] == {"host": "web1", "program": "billing"}


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


def node_app(tmp_path, logger, app):
    """Write logger.js (a recipe) and app.js (JavaScript that requires it); the command that runs the app."""
    (tmp_path / "logger.js").write_text(logger)
    (tmp_path / "app.js").write_text(app)
    return [require("node"), str(tmp_path / "app.js")]


def run_to_end(command, environment):
    """Run a command until it ends on its own, which must be with success."""
    finished = subprocess.run(command, env=environment, capture_output=True, text=True,
                              timeout=DELIVERY_TIMEOUT)
    assert finished.returncode == 0, finished.stdout + finished.stderr


PINO_APP = """
const logger = require('./logger');
logger.info({ order: 7 }, 'order placed');
logger.warn('stock low');
logger.error({ card: 'declined' }, 'payment failed');
"""


def test_pino_http_send(logflow, tmp_path):
    """pino through pino-http-send: an NDJSON batch, sent before the process ends; numeric levels map."""
    environment = node_environment(logflow, "pino", "pino-http-send")
    run_to_end(node_app(tmp_path, recipe("pino"), PINO_APP), environment)
    rows = wait_stored(3, "pino")
    assert {message: row["level"] for message, row in rows.items()} == {
        "order placed": "INFO", "stock low": "WARN", "payment failed": "ERROR"}
    metadata = rows["order placed"]["metadata"]
    assert metadata["order"] == 7 and metadata["pid"] > 0 and metadata["hostname"]
    assert rows["payment failed"]["metadata"]["card"] == "declined"


@pytest.mark.parametrize("settings", [{"max_queue": 3}], indirect=True)
def test_pino_http_send_retries_while_the_queue_is_full(logflow, served, processes, client, key, tmp_path):
    """pino-http-send sends a batch refused with 503 again, and the process ends once it is accepted."""
    environment = node_environment(logflow, "pino", "pino-http-send")
    fill_queue(client, key)
    app = processes("node", node_app(tmp_path, recipe("pino"), PINO_APP), environment,
                    tmp_path / "node.log")
    wait_for(lambda: 503 in served.statuses, timeout=DELIVERY_TIMEOUT,
             message="LogFlow to refuse pino's batch")
    rows = wait_stored(3 + 3, "pino")
    assert rows["payment failed"]["level"] == "ERROR"
    assert app.popen.wait(timeout=DELIVERY_TIMEOUT) == 0, app.tail()


def test_winston_http_transport(logflow, tmp_path):
    """winston's Http transport: a JSON array, sent before the process ends; syslog level names map."""
    environment = node_environment(logflow, "winston")
    run_to_end(node_app(tmp_path, recipe("winston"), """
const logger = require('./logger');
logger.info('order placed', { order: 7 });
logger.warning('stock low');
logger.crit('payment failed');
"""), environment)
    rows = wait_stored(3, "winston")
    assert {message: row["level"] for message, row in rows.items()} == {
        "order placed": "INFO", "stock low": "WARN", "payment failed": "CRITICAL"}
    assert rows["order placed"]["metadata"] == {"order": 7}
