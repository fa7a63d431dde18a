"""Slow, idle and malformed clients against the Procfile's web line: real gunicorn, real sockets, dev mode.

Each test starts `Service.start_web()` (the Procfile's own command) with no
proxy in front, attacks it from this process over 127.0.0.1, and counts how
the server answered the attackers and everyone else meanwhile.
"""
import contextlib
import json
import re
import resource
import selectors
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import gunicorn.config
import gunicorn.http
import pytest

import server
from helpers import wait_for
from processes import ROOT, Service, dev_mode_environment

# Everyone else must be answered within this, whatever the attackers do.
PROBE_SECONDS = 1.0
# The body (and head) deadline of the tests that wait for a 408.
SHORT_TIMEOUT = 2
# A 408 may come this much after its deadline on a machine shared with other test runs.
MARGIN_SECONDS = 2


@pytest.fixture
def start(request, tmp_path):
    """start(*gunicorn_args, **settings): the Procfile's web line in dev mode, with these settings; returns its Service."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        # 320 client sockets here, as many in gunicorn (which inherits the limit), and the rest.
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        request.addfinalizer(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    services = []

    def start_service(*gunicorn_args, **settings):
        env = dev_mode_environment(tmp_path, DATABASE_URL="", PYTHONUNBUFFERED="1",
                                   **{name: str(value) for name, value in settings.items()})
        created = subprocess.run([sys.executable, "manage.py", "add-project", "slow"], cwd=ROOT, env=env,
                                 check=True, capture_output=True, text=True)
        service = Service(tmp_path, env, created.stdout.strip())
        services.append(service)
        service.web = service.start_web(*gunicorn_args)
        service.port = int(service.base_url.rsplit(":", 1)[1])
        return service
    yield start_service
    for service in services:
        service.close()


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_response(sock, keep_open=False):
    """(status, headers as a lower-case dict, body, whether the server then closed) of one response.

    keep_open: the connection is kept alive, so do not wait to see it closed (closed is then False).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed after %r" % data[:200])
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if keep_open:
        return int(status_line.split()[1]), headers, body, False
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    return int(status_line.split()[1]), headers, body, closed


def exchange(port, raw):
    """Send raw bytes on a new connection; the response as read_response gives it."""
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock)


def assert_json_error(status, headers, body, expected_status):
    assert status == expected_status, body[:300]
    assert headers.get("content-type") == "application/json", headers
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error, body


def head(service, method="POST", path="/logs", extra=b""):
    return (b"%s %s HTTP/1.1\r\nHost: test\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n%s"
            % (method.encode(), path.encode(), service.key.encode(), extra))


def probe(service):
    """(seconds, status) of a GET /healthz and of a one-record POST /logs, on new connections."""
    answers = []
    for request in (urllib.request.Request(service.base_url + "/healthz"),
                    urllib.request.Request(service.base_url + "/logs", data=b'{"message": "probe"}', headers={
                        "X-API-Key": service.key, "Content-Type": "application/json"})):
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=PROBE_SECONDS * 3) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = None
        answers.append((time.monotonic() - started, status))
    return answers


def probe_for(service, seconds, stop=lambda: False):
    """Probe every 0.2 s for `seconds` (or until stop()); the (seconds, status) of every probe."""
    answers, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline and not stop():
        answers.extend(probe(service))
        time.sleep(0.2)  # pacing the probes, not synchronisation
    return answers


def assert_all_answered(answers):
    """Every probe answered 200 or 202 within PROBE_SECONDS."""
    late = [(round(seconds, 2), status) for seconds, status in answers
            if status not in (200, 202) or seconds > PROBE_SECONDS]
    print("%d of %d probes answered within %g s" % (len(answers) - len(late), len(answers), PROBE_SECONDS))
    assert answers and not late, "%d of %d probes late or failed: %s" % (len(late), len(answers), late[:10])


class Trickler(threading.Thread):
    """Sends `prefix`, then one byte of `drip` every `interval` s until answered; notes when and what."""

    def __init__(self, port, prefix, drip, interval=0.5, give_up=40):
        super().__init__(daemon=True)
        self.port, self.prefix, self.drip, self.interval, self.give_up = port, prefix, drip, interval, give_up
        self.started = self.answered = self.response = None
        self.error = None

    def run(self):
        with connect(self.port) as sock, selectors.DefaultSelector() as selector:
            sock.sendall(self.prefix)
            self.started = time.monotonic()
            selector.register(sock, selectors.EVENT_READ)
            for byte in self.drip[:int(self.give_up / self.interval)]:
                if selector.select(self.interval):
                    break
                try:
                    sock.sendall(bytes([byte]))
                except OSError as error:  # the server closed without an answer
                    self.error = error
                    return
            else:
                if not selector.select(self.interval):
                    return
            self.answered = time.monotonic()
            try:
                self.response = read_response(sock)
            except OSError as error:
                self.error = error


# How each framing announces a 200-byte body, before its first byte.
FRAMINGS = {
    "length": b"Content-Length: 200\r\n\r\n",
    "chunked": b"Transfer-Encoding: chunked\r\n\r\nc8\r\n",
    # gunicorn reads this as chunked too, and HTTP/1.0 ignores Expect: each was handed to a thread that waited.
    "gzip, chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\nc8\r\n",
    "HTTP/1.0 expecting 100-continue": b"Expect: 100-continue\r\nContent-Length: 200\r\n\r\n",
    # More than LOGFLOW_MAX_BODY_BYTES of framing around 175 KB of data, sent at once, then the last chunk slowly.
    "1 MiB of 1-byte chunks": b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 175_000 + b"c8\r\n",
}


def start_trickling(service, count, framing):
    """`count` clients announcing a 200-byte body (FRAMINGS) that send it a byte every 0.5 s."""
    prefix = head(service, extra=FRAMINGS[framing])
    if framing.startswith("HTTP/1.0"):
        prefix = prefix.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    tricklers = [Trickler(service.port, prefix, b'{"message": "' + b"a" * 184 + b'"}')
                 for _ in range(count)]
    for trickler in tricklers:
        trickler.start()
    return tricklers


def assert_408_in_time(tricklers):
    """Each trickler got a 408 with a JSON body within the body timeout (plus a margin), then the connection closed."""
    for trickler in tricklers:
        trickler.join(timeout=60)
    waits = [round(t.answered - t.started, 2) if t.answered else None for t in tricklers]
    print("408 after %s s (body timeout %d s)" % (waits, SHORT_TIMEOUT))
    for trickler in tricklers:
        assert trickler.response is not None, (waits, trickler.error)
        status, headers, body, closed = trickler.response
        assert_json_error(status, headers, body, 408)
        assert closed, "the connection stays open after the 408"
    assert max(waits) < SHORT_TIMEOUT + MARGIN_SECONDS, waits


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_a_trickled_body_gets_408_within_the_timeout_and_others_are_served(start, framing):
    """A 200-byte body sent a byte every 0.5 s: 408 (JSON) within the body timeout; 8 of them block no one."""
    service = start(LOGFLOW_BODY_TIMEOUT_SECONDS=SHORT_TIMEOUT)
    tricklers = start_trickling(service, 8, framing)
    answers = probe_for(service, SHORT_TIMEOUT + MARGIN_SECONDS, stop=lambda: all(t.answered for t in tricklers))
    assert_408_in_time(tricklers)
    assert_all_answered(answers)
    assert "Traceback" not in service.web.text()


@pytest.mark.parametrize("lines, framing", [
    (b"Content-Length: 5", ("length", 5, None)),
    (b"Expect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 5", ("length", 5, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")),
    (b"Transfer-Encoding: identity, gzip, chunked", ("chunked", None, None)),
    (b"Transfer-Encoding: chunked, chunked", (None, None, None)),
    (b"Transfer-Encoding: chunked, gzip", (None, None, None)),
    (b"Expect: 100-continue\r\nExpect: nothing\r\nContent-Length: 5", (None, None, None)),
])
def test_the_worker_waits_for_every_body_gunicorn_would_wait_for(lines, framing):
    """A body gunicorn reads (and a 100 Continue it would send) is waited for by the worker, not by a thread."""
    assert server.body_framing(b"POST / HTTP/1.1\r\n" + lines + b"\r\n\r\n") == framing


def test_a_connection_whose_request_was_all_parked_stays_alive_however_late_its_thread_runs(monkeypatch):
    """The drain deadline passed before the thread looked (DRAIN_SECONDS 0: a thread set aside on a busy machine).

    The body drains from memory, so the connection is kept as its answer said;
    it was closed, and the requests pipelined behind lost (a test above failed
    1 run in 4 so).
    """
    monkeypatch.setattr(server, "DRAIN_SECONDS", 0)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        parser = gunicorn.http.get_parser(gunicorn.config.Config(), ours, ("127.0.0.1", 1))
        parser.unreader = server.ParkedUnreader(ours)
        parser.unreader.park(b"POST /logs HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                             b"GET /healthz HTTP/1.1\r\n\r\n")
        request = next(parser)
        assert request.body.read(100) == b"hello"
        worker = types.SimpleNamespace(client_timeout=SHORT_TIMEOUT)
        kept = server.BufferingWorker._keepalive_after(worker, types.SimpleNamespace(parser=parser, whole_request=True),
                                                       True)
        assert kept and parser.unreader.take_buffered() == b"GET /healthz HTTP/1.1\r\n\r\n"


def test_the_body_deadline_holds_in_gthread_threads_too(start):
    """Where bodies are read by threads (gunicorn's own gthread worker), logflow.receive() stops a trickle at its deadline."""
    service = start("--worker-class", "gthread", LOGFLOW_BODY_TIMEOUT_SECONDS=SHORT_TIMEOUT)
    # Fewer than the 2 x 4 threads, all reading at once: each is refused at its own deadline.
    assert_408_in_time(start_trickling(service, 4, "length"))
    assert "Traceback" not in service.web.text()


def test_a_trickled_head_gets_408_within_the_timeout(start):
    """A request head sent a byte every 0.5 s is refused (408, JSON) within the timeout, from its first byte."""
    service = start(LOGFLOW_BODY_TIMEOUT_SECONDS=SHORT_TIMEOUT)
    trickler = Trickler(service.port, b"P", head(service)[1:] + b"X-Padding: " + b"a" * 200)
    trickler.start()
    trickler.join(timeout=60)
    assert trickler.response is not None, trickler.error
    waited = trickler.answered - trickler.started
    print("head: 408 after %.2f s (timeout %d s)" % (waited, SHORT_TIMEOUT))
    status, headers, body, closed = trickler.response
    assert_json_error(status, headers, body, 408)
    assert closed
    assert waited < SHORT_TIMEOUT + MARGIN_SECONDS


class Attacker(threading.Thread):
    """Keeps `idle` silent connections and `slow` slow-header ones open, reopening any the server closes.

    Half the slow ones first get a keep-alive request answered, so their slow
    head is the connection's second request.
    """

    def __init__(self, service, idle=300, slow=20, interval=1.0):
        super().__init__(daemon=True)
        self.service, self.idle, self.slow, self.interval = service, idle, slow, interval
        self.stopping = threading.Event()
        self.sockets = {}  # socket -> "idle" | "slow"
        self.counts = {"idle": 0, "slow": 0, "kept-alive": 0}  # connections opened, of each kind

    def open(self, kind, kept_alive=False):
        sock = connect(self.service.port)
        if kept_alive:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            sock.settimeout(5)
            try:
                read_response(sock, keep_open=True)
                self.counts["kept-alive"] += 1
            except OSError:  # not answered in time: it stays a slow-header connection all the same
                pass
        if kind == "slow":
            sock.sendall(b"POST /logs HTTP/1.1\r\nHost: test\r\n")
        sock.setblocking(False)
        self.sockets[sock] = kind
        self.counts[kind] += 1

    def ready(self):
        return len(self.sockets) >= self.idle + self.slow

    def run(self):
        try:
            for n in range(self.idle):
                self.open("idle")
            for n in range(self.slow):
                self.open("slow", kept_alive=n % 2 == 1)
            while not self.stopping.wait(self.interval):
                for sock, kind in list(self.sockets.items()):
                    try:
                        if kind == "slow":
                            sock.send(b"X")
                        elif sock.recv(1, socket.MSG_PEEK) == b"":
                            raise ConnectionError("closed")
                    except BlockingIOError:  # an idle one, still open
                        continue
                    except OSError:
                        # Closed by the server (its head deadline): an attacker opens another.
                        del self.sockets[sock]
                        sock.close()
                        self.open(kind)
        finally:
            self.stopping.set()

    def close(self):
        self.stopping.set()
        self.join(timeout=30)
        for sock in self.sockets:
            sock.close()


def test_idle_and_slow_header_connections_leave_everyone_else_served(start):
    """300 silent connections and 20 sending a header byte a second: /healthz and POST /logs within a second."""
    service = start()  # the default head and body timeout, 10 s: the attack outlasts the probes
    attacker = Attacker(service)
    attacker.start()
    try:
        wait_for(lambda: attacker.ready() or attacker.stopping.is_set(), timeout=60, message="320 connections")
        assert attacker.ready(), "the attacker could not open its connections"
        answers = probe_for(service, 8)
        print("attacker opened %s connections" % attacker.counts)
    finally:
        attacker.close()
    assert_all_answered(answers)


def test_clients_that_keep_sending_after_their_answer_leave_everyone_else_served(start):
    """8 clients that send `Connection: close` requests, then a byte every 0.2 s: /healthz and POST /logs within a second."""
    service = start()
    stopping = threading.Event()

    def keep_sending():
        while not stopping.is_set():
            with connect(service.port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                for _ in range(15):
                    if stopping.wait(0.2):  # pacing the bytes, not synchronisation
                        break
                    try:
                        sock.send(b"x")
                    except OSError:  # closed by the server: the next connection
                        break
    senders = [threading.Thread(target=keep_sending, daemon=True) for _ in range(8)]
    for sender in senders:
        sender.start()
    try:
        answers = probe_for(service, 6)
    finally:
        stopping.set()
        for sender in senders:
            sender.join(timeout=10)
    assert_all_answered(answers)


def test_idle_connections_never_stop_a_worker_accepting(start):
    """More idle connections than --worker-connections allows: the oldest are closed, and everyone else is served."""
    service = start("--worker-connections", "50")  # 2 workers x 50: 150 idle connections fill both
    idle = []
    try:
        for _ in range(150):
            idle.append(connect(service.port))
        answers = probe_for(service, 3)
    finally:
        for sock in idle:
            sock.close()
    assert_all_answered(answers)


def test_requests_in_pieces_pipelined_or_expecting_100_continue_are_answered(start):
    """The worker waits for whole requests however they are framed and cut, and answers each once."""
    service = start()
    key = service.key.encode()
    chunked = (b"POST /logs HTTP/1.1\r\nHost: test\r\nX-API-Key: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"7\r\n[{\"mess\r\na;ext=1\r\nage\": \"c\"}\r\n1\r\n]\r\n0\r\nX-Trailer: 1\r\n\r\n" % key)
    invalid = b'[{"message": 1}]'
    pipelined = (head(service, extra=b"Content-Length: %d\r\n\r\n%s" % (len(invalid), invalid))
                 + b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n" + chunked
                 + b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    with connect(service.port) as sock:
        for start_at in range(0, len(pipelined), 50):  # in pieces, as a slow network delivers them
            sock.sendall(pipelined[start_at:start_at + 50])
            time.sleep(0.01)  # pacing the pieces, not synchronisation
        answers = b""
        while chunk := sock.recv(65536):  # the last request closes the connection
            answers += chunk
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"422", b"200", b"202", b"200"], answers

    body = b'[{"message": "after 100 Continue"}]'
    with connect(service.port) as sock:
        sock.sendall(head(service, extra=b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, reply, _ = read_response(sock)
    assert status == 202 and json.loads(reply)["accepted"] == 1, reply


def test_pipelined_requests_before_a_half_close_are_all_answered_and_stored(start, tmp_path):
    """A client that sends its requests, then shuts its side (SHUT_WR), gets every answer, as from gthread.

    The requests behind the first are read ahead; the end of the stream must
    not drop them. A body cut short by the close is a 400, not silence.
    """
    service = start()
    posts = b"".join(head(service, extra=b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                     for body in (b'{"message": "pipelined 1"}', b'{"message": "pipelined 2"}'))
    with connect(service.port) as sock:
        sock.sendall(posts + b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"202", b"202", b"200"], answers
    with connect(service.port) as sock:
        sock.sendall(head(service, extra=b"Content-Length: 50\r\n\r\n{\"message\""))
        sock.shutdown(socket.SHUT_WR)
        status, headers, body, _ = read_response(sock)
    assert_json_error(status, headers, body, 400)

    consumer = service.start_consumer()

    def stored():
        consumer.check_alive()
        with contextlib.closing(sqlite3.connect(str(tmp_path / "data" / "logflow.db"))) as database:
            return sorted(row[0] for row in database.execute("SELECT message FROM logs"))
    assert wait_for(lambda: stored() == ["pipelined 1", "pipelined 2"], timeout=30, message="both records stored")


@pytest.mark.parametrize("size", [b"-5", b"0x15"])
def test_a_malformed_chunk_size_is_a_400_in_json_without_a_traceback(start, size):
    """Transfer-Encoding: chunked with a chunk size that is not hex: 400 {"error": ...}, nothing logged as a traceback."""
    service = start()
    raw = head(service, extra=b"Transfer-Encoding: chunked\r\n\r\n%s\r\n{\"message\": \"x\"}\r\n0\r\n\r\n" % size)
    status, headers, body, _ = exchange(service.port, raw)
    assert_json_error(status, headers, body, 400)
    # The connection is still served for the next client, and nothing went to the log as a traceback.
    assert probe(service)[0][1] == 200
    assert "Traceback" not in service.web.text(), service.web.tail()


def test_a_body_of_many_small_chunks_is_read_in_linear_time(start):
    """0.9 MB in 100-byte chunks, then a pipelined request: answered as fast as from gthread (0.02 s to read, not 3 s).

    gunicorn's chunked reader copies the rest of what one read returned for
    every chunk: a parked body must reach it a socket read at a time.
    """
    service = start()
    lines = b"".join(b'{"message": "chunk %03d %s"}\n' % (n, b"x" * 860) for n in range(1000))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(lines[at:at + 100]), lines[at:at + 100])
                      for at in range(0, len(lines), 100))
    raw = (head(service, extra=b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
           .replace(b"Content-Type: application/json\r\n", b"") + chunks + b"0\r\n\r\n"
           + b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert len(lines) // 100 > 8_000 and len(chunks) < 1 << 20
    with connect(service.port) as sock:
        started = time.monotonic()
        sock.sendall(raw)
        status, _, reply, _ = read_response(sock, keep_open=True)
        seconds = time.monotonic() - started
        assert read_response(sock)[0] == 200
    assert status == 202 and json.loads(reply)["accepted"] == 1000, reply[:300]
    assert seconds < 2.0, seconds


def test_a_key_in_a_header_line_without_a_colon_never_reaches_the_log(start):
    """gunicorn quotes such a line whole in its log: a shipper's "X-API-Key lf_..." typo would log its key."""
    service = start()
    for line in (b"X-API-Key %s", b"X-API-Key=%s", b"Authorization Bearer %s"):
        raw = b"POST /logs HTTP/1.1\r\nHost: test\r\n" + line % service.key.encode() + b"\r\n\r\n"
        status, headers, body, _ = exchange(service.port, raw)
        assert_json_error(status, headers, body, 400)
        in_answer = service.key.encode() in body  # a boolean: a failure must not print the key either
        assert not in_answer, "the key is in the answer"
    assert wait_for(lambda: service.web.count("Invalid HTTP Header") == 3, timeout=10, message="three log lines")
    in_log = service.key[3:] in service.web.text()
    assert not in_log, "the key is in gunicorn's log"


@pytest.mark.parametrize("raw, expected", [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(101)) + b"\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header: v\r\n\r\n", 400),
    (b"POST /logs HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: zstd, chunked\r\n\r\n", 501),
], ids=["request-line-414", "header-count-431", "header-size-431", "bad-header-400", "transfer-coding-501"])
def test_gunicorn_refusals_are_json(start, raw, expected):
    """What gunicorn refuses before LogFlow sees the request is answered with its status and a JSON body."""
    service = start()
    status, headers, body, closed = exchange(service.port, raw)
    assert_json_error(status, headers, body, expected)
    assert closed
    assert "Traceback" not in service.web.text(), service.web.tail()


def test_clients_at_the_worker_connections_limit_are_never_closed_unanswered(start):
    """24 keep-alive clients, pausing between requests, against 2 workers x --worker-connections 8: all answered.

    A full worker stops accepting, as gthread does, and closes a parked
    connection to make room only once it has been slow (server.EVICT_AFTER),
    never one whose request is on its way.
    """
    service = start("--worker-connections", "8")
    request = head(service, extra=b'Content-Length: 20\r\n\r\n{"message": "busy!"}')
    stopping, lock = threading.Event(), threading.Lock()
    counts = {"answered": 0, "unanswered": 0, "reconnects": 0}

    def client():
        sock = None
        while not stopping.wait(0.02):  # pacing the requests, as a shipper's flushes are
            try:
                if sock is None:
                    sock = connect(service.port)
                sock.sendall(request)
                status, headers, _, _ = read_response(sock, keep_open=True)
                outcome = "answered" if status == 202 else "status %d" % status
            except OSError:  # ConnectionError too: closed without an answer
                outcome, headers = "unanswered", {"connection": "close"}
            with lock:
                counts[outcome] = counts.get(outcome, 0) + 1
            if headers.get("connection", "").lower() == "close":
                sock.close()
                sock = None
                with lock:
                    counts["reconnects"] += 1
        if sock is not None:
            sock.close()
    clients = [threading.Thread(target=client, daemon=True) for _ in range(24)]
    for thread in clients:
        thread.start()
    stopping.wait(5)  # the load's duration
    stopping.set()
    for thread in clients:
        thread.join(timeout=30)
    print("keep-alive clients: %s" % counts)
    assert counts["answered"] > 100 and set(counts) == {"answered", "unanswered", "reconnects"}, counts
    assert counts["unanswered"] == 0, counts
