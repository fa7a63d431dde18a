"""docs/production.md's recipe as installed: the systemd units, the settings file, logflow-manage, and nginx in front of LogFlow.

The files in deploy/ name the recipe's places: /opt/logflow (the code and its
.venv), /etc/logflow/logflow.env, /var/lib/logflow, and the ports 8000 (web),
8001 (viewer pool) and 8080 (nginx's internal listener). The tests use copies
in which only those are turned into this machine's: this interpreter's bin
folder, this checkout, a temporary folder, free ports. LogFlow then runs as the
units start it (their ExecStart, with the environment systemd would give), on
PostgreSQL and Redis, and nginx includes deploy/nginx's two snippets as they
are, from a main configuration of the test's own that listens on free ports of
127.0.0.1 on plain HTTP in place of the site's TLS server.
"""
import gzip
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid

import pytest
import redis
from gunicorn.config import Config

import config
from conftest import SECRET_KEY, base_settings
from helpers import wait_for
from logflow import create_app
from processes import ROOT, Process, free_port, procfile_command, query, unique_database_name
from proxies import NGINX_DIR, PASSWORD, SYSTEMD_PATH, Client, program, start_nginx

DEPLOY = os.path.join(ROOT, "deploy")
# LOGFLOW_MAX_BODY_BYTES's default, which deploy/logflow.env.example sets and nginx's snippet matches.
BODY_LIMIT = 1024 * 1024


def unit(name):
    """A unit file of deploy/ as {section: {key: [values in order]}}."""
    sections, section = {}, None
    with open(os.path.join(DEPLOY, name)) as handle:
        for line in handle:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = sections.setdefault(line.strip("[]"), {})
            else:
                key, _, value = line.partition("=")
                section.setdefault(key, []).append(value)
    return sections


def settings_file(path):
    """The VARIABLE=value lines of a settings file, as systemd's EnvironmentFile= reads them."""
    values = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line and line[0] not in "#;":
                name, _, value = line.partition("=")
                values[name] = value
    return values


class Layout:
    """Where this run puts what the recipe installs in /opt, /etc and /var/lib, and the ports it listens on."""

    def __init__(self, directory):
        self.directory = directory
        self.settings = directory / "logflow.env"
        self.state = directory / "state"
        self.ports = {port: free_port() for port in (8000, 8001, 8080)}

    def localize(self, text):
        """The recipe's text with its paths and ports turned into this run's."""
        places = [("/opt/logflow/.venv/bin", os.path.dirname(sys.executable)), ("/opt/logflow", ROOT),
                  ("/etc/logflow/logflow.env", str(self.settings)), ("/var/lib/logflow", str(self.state))]
        places += [("127.0.0.1:%d" % port, "127.0.0.1:%d" % local) for port, local in self.ports.items()]
        for recipe, here in places:
            text = text.replace(recipe, here)
        return text

    def copy(self, source, name=None):
        """A localized copy of a file of deploy/ in this run's folder, executable as the original is."""
        target = self.directory / (name or os.path.basename(source))
        with open(source) as handle:
            target.write_text(self.localize(handle.read()))
        shutil.copymode(source, target)
        return target

    def environment(self, unit_name):
        """The environment systemd gives the unit: its Environment= lines, then the settings file's, which win."""
        environment = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": str(self.state)}
        for assignment in unit(unit_name)["Service"].get("Environment", []):
            name, _, value = assignment.partition("=")
            environment[name] = value
        environment.update(settings_file(self.settings))
        return environment

    def command(self, unit_name):
        """The unit's ExecStart as argv, ${VARIABLE}s expanded from its environment as systemd does."""
        environment = self.environment(unit_name)
        words = shlex.split(self.localize(unit(unit_name)["Service"]["ExecStart"][0]))
        return [re.sub(r"\$\{(\w+)\}", lambda found: environment[found[1]], word) for word in words]


def gunicorn_flags(words):
    """gunicorn's settings from its command line's words (after the app), as gunicorn parses them."""
    parsed = Config().parser().parse_args(words)
    return {name: value for name, value in vars(parsed).items() if value is not None and name != "args"}


# ---- systemd ---------------------------------------------------------------------------------

UNITS = ("logflow-web.service", "logflow-viewer.service", "logflow-consumer@.service")


def verify(directory, names):
    """systemd-analyze verify on unit files in directory; the consumer template as two instances."""
    paths = [str(directory / name.replace("@.", "@1.")) for name in names]
    paths += [str(directory / name.replace("@.", "@2.")) for name in names if "@." in name]
    return subprocess.run([program("systemd-analyze", "/usr/bin/systemd-analyze"), "verify", *paths],
                          capture_output=True, text=True, timeout=60)


def test_units_pass_systemd_analyze_verify(tmp_path):
    """The units as this machine would install them verify cleanly; as written, verify sees their programs missing here."""
    layout = Layout(tmp_path)
    local, recipe = tmp_path / "local", tmp_path / "recipe"
    local.mkdir(), recipe.mkdir()
    for name in UNITS:
        layout.copy(os.path.join(DEPLOY, name), os.path.join("local", name))
        shutil.copy(os.path.join(DEPLOY, name), recipe / name)
    result = verify(local, UNITS)
    complaints = [line for line in result.stderr.splitlines() if "logflow" in line]
    assert (result.returncode, complaints) == (0, []), result.stderr
    # The check can fail: verify looks for ExecStart's program, which is not in /opt/logflow on this machine.
    if not os.path.exists("/opt/logflow/.venv/bin/gunicorn"):
        unverified = verify(recipe, UNITS)
        assert unverified.returncode != 0
        assert "/opt/logflow/.venv/bin/gunicorn is not executable" in unverified.stderr, unverified.stderr


def procfile_words(name):
    """A Procfile line's words as sh expands them without LogFlow's variables set (their defaults)."""
    script = 'set -- %s; printf "%%s\\0" "$@"' % procfile_command(name)
    expanded = subprocess.run(["sh", "-c", script], env={"PATH": SYSTEMD_PATH}, capture_output=True, text=True,
                              check=True).stdout
    return expanded.split("\0")[:-1]


def test_web_units_run_the_procfiles_web_line_and_stop_within_their_timeout():
    """The web unit's gunicorn is the Procfile's web line (the viewer's, but for its port); systemd waits past its graceful timeout."""
    procfile = procfile_words("web")
    expected = gunicorn_flags(procfile[2:])
    for name, port in (("logflow-web.service", 8000), ("logflow-viewer.service", 8001)):
        service = unit(name)["Service"]
        defaults = dict(assignment.split("=", 1) for assignment in service["Environment"])
        words = [re.sub(r"\$\{(\w+)\}", lambda found: defaults[found[1]], word)
                 for word in shlex.split(service["ExecStart"][0])]
        assert (os.path.basename(words[0]), words[1]) == ("gunicorn", procfile[1])
        assert gunicorn_flags(words[2:]) == dict(expected, bind=["127.0.0.1:%d" % port])
        assert service["KillSignal"] == ["SIGTERM"] and service["KillMode"] == ["mixed"]
        assert int(service["TimeoutStopSec"][0]) > expected["graceful_timeout"]
        # HUP would fork new workers from a master holding the old code: upgrades restart.
        assert "--preload" not in words and "ExecReload" not in service


def test_consumer_unit_stops_it_with_one_sigterm_to_the_main_process():
    """huey's graceful signal is TERM, systemd sends it once and to the main process only, and restarts a consumer that exits."""
    service = unit("logflow-consumer@.service")["Service"]
    words = shlex.split(service["ExecStart"][0])
    assert os.path.basename(words[0]) == "huey_consumer" and words[1] == "tasks.huey"
    assert words[words.index("--graceful-signal") + 1] == "TERM"
    assert (service["KillSignal"], service["KillMode"], service["Restart"]) == (["SIGTERM"], ["mixed"], ["always"])
    assert int(service["TimeoutStopSec"][0]) >= 60
    assert "ExecStop" not in service and "ExecReload" not in service


def test_settings_file_reads_alike_in_systemd_and_sh_and_stops_logflow_until_filled_in():
    """logflow.env.example keeps to lines both readers agree on, sets the production settings, and its placeholder secret is refused."""
    path = os.path.join(DEPLOY, "logflow.env.example")
    with open(path) as handle:
        lines = [line.rstrip("\n") for line in handle if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"$\\`]*", line) for line in lines), lines
    read_by_sh = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; exec env -0', "sh", path],
                                env={"PATH": SYSTEMD_PATH}, capture_output=True, text=True, check=True).stdout
    values = settings_file(path)
    sh_values = dict(item.split("=", 1) for item in read_by_sh.split("\0") if item)
    assert {name: sh_values.get(name) for name in values} == values
    assert {"DATABASE_URL", "REDIS_URL", "LOGFLOW_SECRET_KEY", "LOGFLOW_LOG_DIR"} <= set(values)
    assert values["LOGFLOW_LOG_DIR"].startswith("/var/lib/logflow/")  # the consumers' StateDirectory=
    with pytest.raises(config.InvalidSetting, match="^LOGFLOW_SECRET_KEY: "):
        config.load(values)
    assert config.load(dict(values, LOGFLOW_SECRET_KEY=SECRET_KEY)).max_body_bytes == BODY_LIMIT


# ---- LogFlow as the units run it, behind nginx ---------------------------------------------------


class Stack:
    """LogFlow started as the units start it, nginx in front, and what the tests need to talk to them."""

    def __init__(self, directory):
        self.layout = Layout(directory)
        self.processes = []

    def spawn(self, name, argv, env):
        process = Process(name, argv, env, self.layout.directory / ("%s.log" % name))
        self.processes.append(process)
        return process

    def manage(self, *args, stdin=None):
        """deploy/logflow-manage (localized) with these arguments; returns its stdout."""
        done = subprocess.run([str(self.manage_script), *args], input=stdin, capture_output=True, text=True,
                              env={"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def start_web(self, unit_name):
        """gunicorn as the unit starts it (its access log to stdout for the tests); returns once systemd would be told it is ready."""
        notify_path = self.layout.directory / ("%s.notify" % unit_name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(0.2)
            env = dict(self.layout.environment(unit_name), NOTIFY_SOCKET=str(notify_path))
            process = self.spawn(unit_name, self.layout.command(unit_name) + ["--access-logfile", "-"], env)

            def ready():
                process.check_alive()
                try:
                    return b"READY=1" in notify.recv(4096).split(b"\n")
                except socket.timeout:
                    return False
            wait_for(ready, timeout=60, message="%s to notify READY=1" % unit_name)
        return process

    def stop(self):
        """SIGTERM to every process at once (one each, as systemd sends), SIGKILL to any still running 15 s later."""
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes:
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=10)
        for process in self.processes:  # shown by pytest when a test failed
            print("---- %s (exit %s)\n%s" % (process.name, process.popen.returncode, process.tail()))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_server, redis_server):
    """LogFlow from the units: a database set up through logflow-manage, web, viewer pool, a consumer; nginx in front."""
    stack = Stack(tmp_path_factory.mktemp("production"))
    layout = stack.layout
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    stack.db_url = postgres_server.create_database(unique_database_name("production"))
    with open(os.path.join(DEPLOY, "logflow.env.example")) as handle:
        settings = layout.localize(handle.read())
    # The example's placeholders filled in, as the recipe's step 2 says; one web worker each on this shared machine.
    for name, value in (("DATABASE_URL", stack.db_url), ("REDIS_URL", redis_server.url),
                        ("LOGFLOW_SECRET_KEY", SECRET_KEY), ("WEB_CONCURRENCY", "1")):
        settings, found = re.subn(r"(?m)^%s=.*$" % name, "%s=%s" % (name, value), settings)
        assert found == 1, name
    layout.settings.write_text(settings)
    stack.manage_script = layout.copy(os.path.join(DEPLOY, "logflow-manage"))
    stack.manage("init-db")
    stack.key = stack.manage("add-project", "shop")
    stack.read_key = stack.manage("create-key", "shop", "--scope", "read")
    stack.manage("create-user", "ada", "--project", "shop", "--password-stdin", stdin=PASSWORD + "\n")
    try:
        stack.web = stack.start_web("logflow-web.service")
        stack.viewer = stack.start_web("logflow-viewer.service")
        stack.consumer = stack.spawn("consumer", layout.command("logflow-consumer@.service"),
                                     layout.environment("logflow-consumer@.service"))
        stack.public, stack.internal = start_nginx(layout.directory / "nginx", layout.ports[8000],
                                                   layout.ports[8001], stack.spawn)
        yield stack
    finally:
        stack.stop()


def stored(stack, record_id):
    """The stored row's message, or None."""
    rows = query(stack.db_url, "SELECT message FROM logs WHERE id = '%s'" % uuid.UUID(record_id))
    return rows[0][0] if rows else None


def test_a_record_posted_through_nginx_is_stored_and_read_back(stack):
    client = Client(stack.public)
    record_id = str(uuid.uuid4())
    answer = client.post_logs(stack.key, json.dumps({"id": record_id, "message": "through nginx"}))
    assert answer.status == 202 and answer.json()["accepted"] == 1, answer
    wait_for(lambda: stack.consumer.check_alive() or stored(stack, record_id), timeout=30,
             message="the consumer to store the record")
    assert stored(stack, record_id) == "through nginx"
    read = client.get("/logs/%s" % record_id, {"X-API-Key": stack.read_key})
    assert read.status == 200 and read.json()["message"] == "through nginx", read
    listed = client.get("/logs?limit=10", {"X-API-Key": stack.read_key})
    assert record_id in [log["id"] for log in listed.json()["logs"]]
    # The daily files are written where the settings file puts them, in the consumers' state folder.
    assert os.listdir(stack.layout.state / "logs")
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")


def gzip_body(size, records):
    """A gzip body of exactly `size` bytes holding these records: deflate's stored blocks, the JSON padded with spaces."""
    data = json.dumps(records).encode()
    padding = size - len(gzip.compress(data, compresslevel=0, mtime=0))
    for _ in range(5):
        body = gzip.compress(data + b" " * padding, compresslevel=0, mtime=0)
        if len(body) == size:
            return body
        padding += size - len(body)
    raise AssertionError("no gzip body of %d bytes" % size)


THOUSAND_RECORDS = [{"message": "%04d %s" % (number, "x" * 900)} for number in range(1000)]


def test_bodies_up_to_logflows_limit_pass_and_larger_get_logflows_413_from_nginx(stack):
    """A gzip body of 1,000 records just under 1 MiB is stored; one over it is nginx's 413, the very answer gunicorn gives."""
    records = [dict(record, id=str(uuid.uuid4())) for record in THOUSAND_RECORDS]
    headers = {"Content-Encoding": "gzip"}
    client = Client(stack.public)
    answer = client.post_logs(stack.key, gzip_body(BODY_LIMIT - 1, records), headers)
    assert answer.status == 202 and answer.json()["accepted"] == 1000, answer
    ids = "','".join(record["id"] for record in records)
    wait_for(lambda: query(stack.db_url, "SELECT count(*) FROM logs WHERE id IN ('%s')" % ids)[0][0] == 1000,
             timeout=60, message="the 1,000 records to be stored")

    too_large = gzip_body(BODY_LIMIT + 1, records[:10])
    refused = client.post_logs(stack.key, too_large, headers)
    direct = Client(stack.layout.ports[8000]).post_logs(stack.key, too_large, headers)
    assert (refused.status, refused.json()) == (direct.status, direct.json()) == (
        413, {"error": "the body is larger than %d bytes" % BODY_LIMIT})
    assert refused.headers["Content-Type"] == "application/json"
    assert "nginx" in refused.headers["Server"] and "gunicorn" in direct.headers["Server"]


def test_a_body_of_exactly_the_limit_passes(stack):
    # logflow.receive once read again after the last byte, which gunicorn's capped stream refused as too large.
    records = [dict(record, id=str(uuid.uuid4())) for record in THOUSAND_RECORDS]
    answer = Client(stack.public).post_logs(stack.key, gzip_body(BODY_LIMIT, records), {"Content-Encoding": "gzip"})
    assert answer.status == 202, answer


LINKED = re.compile(rb'(?:href|src)="(/[^"]*)"')


def test_the_viewer_works_through_nginx_with_every_file_its_pages_link(stack):
    client = Client(stack.public)
    assert client.get("/").headers["Location"] == "/ui/"
    assert client.get("/ui").status == 308
    assert client.get("/ui/").headers["Location"] == "/ui/login"
    assert client.sign_in("ada").status == 302
    pages = [client.get(path) for path in ("/ui/", "/ui/projects/shop")]
    assert [page.status for page in pages] == [200, 200]
    links = {link.decode() for page in pages for link in LINKED.findall(page.body)}
    files = {link for link in links if link.startswith("/ui/static/")}
    assert {"/ui/static/viewer.css", "/ui/static/explore.js", "/ui/static/overview.js"} <= files
    for link in links:
        assert client.get(link).status == 200, link
    with open(os.path.join(ROOT, "static", "explore.js"), "rb") as handle:
        assert client.get("/ui/static/explore.js").body == handle.read()


NGINX_404 = {"error": "not found"}
# Routes of LogFlow that nginx keeps from the public: the operator's, and Flask's own /static/
# (the same folder as /ui/static/, which is what the viewer's pages link).
PRIVATE = {"/metrics", "/healthz", "/readyz", "/static/<path:filename>"}


def test_every_other_route_of_logflow_is_reachable_through_nginx(stack, tmp_path):
    """Each route the app has, but the private ones, reaches gunicorn: a route added to LogFlow and not to nginx fails here."""
    app = create_app(base_settings(tmp_path))
    rules = {rule.rule: sorted(rule.methods - {"HEAD", "OPTIONS"})[0] for rule in app.url_map.iter_rules()}
    assert PRIVATE <= set(rules)
    client, unreached = Client(stack.public), []
    for rule, method in sorted(rules.items()):
        path = re.sub(r"<(?:int:)?\w+>", "1", re.sub(r"<path:\w+>", "viewer.css", rule))
        answer = client.request(method, path, b"" if method != "GET" else None)
        if (answer.status == 404 and answer.body == b'{"error":"not found"}') != (rule in PRIVATE):
            unreached.append((rule, method, answer))
    assert unreached == []


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/metrics/", "//metrics", "/logs/../metrics",
                                  "/logs/%2e%2e/metrics", "/ui/..%2fmetrics", "/static/viewer.css", "/logsx",
                                  "/favicon.ico"])
def test_other_paths_are_nginxs_404_on_the_public_port(stack, path):
    answer = Client(stack.public).get(path)
    assert (answer.status, answer.json()) == (404, NGINX_404), answer
    assert "nginx" in answer.headers["Server"]


def test_operator_paths_answer_on_the_internal_listener_only(stack):
    internal = Client(stack.internal)
    metrics = internal.get("/metrics")
    assert metrics.status == 200 and b"logflow_consumers_alive" in metrics.body
    assert (internal.get("/healthz").json(), internal.get("/readyz").json()) == ({"status": "ok"}, {"status": "ready"})
    assert internal.get("/logs", {"X-API-Key": stack.read_key}).status == 404
    assert internal.get("/ui/login").status == 404


def test_live_updates_arrive_through_nginx_from_the_viewer_pool(stack):
    """A signed-in page's live poll (GET /logs/live, as explore.js asks) gets a log posted after its cursor, uncached."""
    browser, sender = Client(stack.public), Client(stack.public)
    assert browser.sign_in("ada").status == 302
    start = browser.get("/logs/live?project=shop")
    assert start.status == 200 and start.headers["Cache-Control"] == "no-store", start
    record_id = str(uuid.uuid4())
    assert sender.post_logs(stack.key, json.dumps({"id": record_id, "message": "live through nginx"})).status == 202

    def shown():
        answer = browser.get("/logs/live?project=shop&cursor=%s" % start.json()["cursor"])
        assert answer.status in (200, 429), answer  # 429: another poll in hand, ask again (the page does)
        return answer.status == 200 and [log["message"] for log in answer.json()["logs"] if log["id"] == record_id]
    assert wait_for(shown, timeout=30, interval=0.5, message="the live poll to show the log") == ["live through nginx"]
    # The polls and pages went to the viewer pool, the POSTs to the web process.
    assert stack.viewer.count("GET /logs/live?project=shop") >= 2 and stack.viewer.count("GET /ui/login") >= 1
    assert stack.web.count("GET /logs/live") == 0 and stack.web.count("POST /logs") >= 1
    assert stack.viewer.count("POST /logs ") == 0


def test_wrong_passwords_are_counted_per_client_behind_nginx(stack):
    """nginx passes the client's address on: one client's wrong passwords do not hold back another, even one naming it."""
    first, second = Client(stack.public, "127.0.0.2"), Client(stack.public, "127.0.0.3")
    for attempt in range(5):  # a different name each time: only the address is counted five times
        assert first.sign_in("nobody-%d" % attempt, "wrong password").status == 401
    assert first.sign_in("nobody-5", "wrong password").status == 429
    # The second client says it is the first: nginx appends the address it sees, and LogFlow reads that one.
    assert second.sign_in("nobody-6", "wrong password", {"X-Forwarded-For": "127.0.0.2"}).status == 401
    assert second.sign_in("ada").status == 302


def test_nginx_answers_a_json_503_while_gunicorn_does_not_answer(tmp_path):
    """With no web process listening (a restart, an outage), clients get a 503 with Retry-After, as LogFlow's own."""
    processes = []

    def spawn(name, argv, env):
        processes.append(Process(name, argv, env, tmp_path / ("%s.log" % name)))
        return processes[-1]
    try:
        closed = free_port()
        public, _ = start_nginx(tmp_path / "nginx", closed, closed, spawn)
        client = Client(public)
        for answer in (client.post_logs("lf_unused", b"{}"), client.get("/ui/")):
            assert (answer.status, answer.headers["Retry-After"]) == (503, "5"), answer
            assert answer.json() == {"error": "LogFlow is not answering; retry later"}
    finally:
        for process in processes:
            process.stop()


def test_the_site_file_with_its_tls_server_is_valid_nginx(tmp_path):
    """deploy/nginx/logflow.conf, with a certificate made here, the snippets from deploy/ and free ports, passes nginx -t."""
    openssl = program("openssl", "/usr/bin/openssl")
    certificate, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=logs.example.com", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True, timeout=60)
    with open(os.path.join(NGINX_DIR, "logflow.conf")) as handle:
        site = handle.read()
    site = site.replace("/etc/letsencrypt/live/logs.example.com", str(tmp_path))
    site = site.replace("/etc/nginx/snippets", NGINX_DIR)
    # nginx -t binds the ports: free ones of 127.0.0.1 (80 and 443 need root; a container may lack IPv6).
    site = re.sub(r"(?m)^ *listen \[::\]:.*\n", "", site)
    ports = {}
    site = re.sub(r"listen (?:127\.0\.0\.1:)?(\d+)",
                  lambda found: "listen 127.0.0.1:%d" % ports.setdefault(found[1], free_port()), site)
    assert sorted(ports) == ["443", "80", "8080"], ports
    (tmp_path / "logflow.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n    access_log {0}/access.log;\n"
        "    include {0}/logflow.conf;\n}}\n".format(tmp_path))
    result = subprocess.run([program("nginx", "/usr/sbin/nginx"), "-t", "-p", str(tmp_path),
                             "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Newer nginx (1.25.1 on) warns that `listen ... http2` gives way to `http2 on`, which 1.22 lacks.
    warnings = [line for line in result.stderr.splitlines() if "[warn]" in line and "http2" not in line]
    assert warnings == [] and "test is successful" in result.stderr, result.stderr

