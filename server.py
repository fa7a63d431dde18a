"""LogFlow's gunicorn worker: gthread, but a connection gets a thread only once its whole request has arrived.

gunicorn's gthread worker hands every new or reawakened connection to a
thread, which then blocks reading the request: an idle connection held a
thread for 5 s before going back to the poller, and a head or body trickled
a byte at a time held one for as long as the client liked, so a few hundred
idle connections, or one slow client per thread, stalled everyone.
BufferingWorker reads requests in the worker's event loop, without blocking,
as a buffering proxy would: the head (within gunicorn's limits), then a body
of up to LOGFLOW_MAX_BODY_BYTES, each within LOGFLOW_BODY_TIMEOUT_SECONDS
(else 408), and only then gives the connection a thread, gunicorn's parser
reading what arrived from memory. What it leaves to a thread (TLS, framing
gunicorn must judge) is still bounded by logflow.receive()'s deadline.

It also answers gunicorn's own refusals (400, 414, 431, 501...) in JSON.
Run it with `gunicorn --worker-class server.BufferingWorker` (the Procfile's web line).
"""
import io
import re
import selectors
import socket
import time
from functools import partial

import orjson
from gunicorn import http
from gunicorn.http.errors import InvalidHeader, LimitRequestHeaders, LimitRequestLine
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

import config

# Bytes of requests one worker process holds while they arrive: beyond it the
# connections parked longest are answered 503 (Retry-After: 1). A body is at
# most LOGFLOW_MAX_BODY_BYTES (1 MiB) and arrives in milliseconds from a
# client that is not slow on purpose. 64 MiB took a worker to 290 MB with 8 of
# the largest requests at once; 16 MiB, 251 MB (those 8 alone: 239 MB).
PARKED_BYTES = 16 << 20
# A full worker (--worker-connections) closes a parked connection to make room
# for a new one only once it has waited this long for its head, or for its
# body: a request arriving at network speed is never cut off, and an idle
# connection keeps its place for no longer than this while others wait.
EVICT_AFTER = 0.5
# How long a thread may wait for what the application left unread of a body
# (a 401 answered before reading it, say) before the connection is closed
# instead of kept alive: it is normally here already. gthread waits 5 s.
DRAIN_SECONDS = 0.01
# How long, and for how many bytes, a connection being closed is read (and
# what it sends thrown away) after its last response, as gunicorn's
# util.close_graceful does: closing with unread data would reset the
# connection, and the client could lose that response.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 10
# A chunked body is waited for while its framing and data take at most this
# many times LOGFLOW_MAX_BODY_BYTES (chunks of a few bytes each, then 413).
CHUNKED_FRAMING = 2
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The characters of a header's name (RFC 9110's token).
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]*")


class Arrival:
    """What a parked connection has sent of its request so far, and by when the rest must come."""

    __slots__ = ("data", "deadline", "scanned", "head_end", "body_end", "chunk_at", "payload")

    def __init__(self, data, deadline):
        self.data = bytearray(data)
        self.deadline = deadline
        self.scanned = 0  # bytes of the head searched for its end so far
        self.head_end = None  # just past the head's CRLF CRLF, once it is here
        self.body_end = None  # just past a Content-Length body
        self.chunk_at = None  # where the next chunk-size line of a chunked body starts
        self.payload = 0  # bytes of chunk data before chunk_at


class BufferingWorker(ThreadWorker):
    """gthread that keeps a connection in its selector until its whole request (head, then body) is here."""

    def init_process(self):
        settings = config.load()
        # The head gets as long as the body, each: one setting says how long a
        # slow client may keep LogFlow waiting (see docs/production.md).
        self.client_timeout = settings.body_timeout_seconds
        self.max_body = settings.max_body_bytes
        self.max_line, self.max_headers = head_limits(self.cfg)
        self.parked = {}  # connection -> Arrival, earliest deadline first
        self.parked_bytes = 0
        self.lingering = {}  # connection being closed -> [deadline, bytes read], earliest deadline first
        super().init_process()

    def enqueue_req(self, conn):
        """Give the connection a thread if its request is all here; else park it until it is.

        gthread calls this for every connection that may have a request to
        read: accepted, kept alive and readable again, or with bytes read
        ahead behind its previous request.
        """
        if getattr(conn, "request_ready", False) or self.cfg.is_ssl \
                or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            # TLS records and an HTTP/2 preface are not read here: gthread's own way.
            conn.request_ready = False
            super().enqueue_req(conn)
            return
        read_ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        self.parked[conn] = Arrival(read_ahead, time.monotonic() + self.client_timeout)
        self.parked_bytes += len(read_ahead)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.receive, conn))
        # A kept-alive connection is readable already; an accepted one often has its request too.
        self.receive(conn)

    def receive(self, conn, _sock=None):
        """Read what the client has sent, without blocking, and see whether the request is complete."""
        arrival = self.parked.get(conn)
        if arrival is None:
            return  # handed over or closed by an earlier event of the same round
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            data = None
        except OSError:
            self.unpark(conn)  # reset: nothing can be answered
            self.close(conn)
            return
        if data == b"":
            if arrival.data:
                # Half-closed after sending: requests read ahead behind an answered
                # one may be whole. gunicorn answers those, and meets the end of
                # the rest at once (the application's 400 for a body cut short).
                self.hand_over(conn)
            else:
                self.unpark(conn)  # closed before sending anything: nothing to answer
                self.close(conn)
            return
        if data:
            arrival.data += data
            self.parked_bytes += len(data)
        if arrival.head_end is None:
            self.check_head(conn, arrival)
        if conn in self.parked and arrival.head_end is not None:
            self.check_body(conn, arrival)
        self.evict()

    def check_head(self, conn, arrival):
        """Note where a complete head ends and how its body is framed; refuse one too long, as gunicorn would."""
        data = arrival.data
        # Only what came since the last look is searched: a head trickled a
        # byte at a time is not scanned again on every byte.
        since, arrival.scanned = max(arrival.scanned - 3, 0), len(data)
        end = data.find(b"\r\n\r\n", since)
        if end >= 0:
            self.start_body(conn, arrival, end + 4)
        elif has_bare_lf(data, since):
            self.hand_over(conn)  # which gunicorn refuses at once (400)
        else:
            # gunicorn's parser would refuse these only after more bytes came:
            # the same refusals, now (max_line is None when unlimited).
            line_end = data.find(b"\r\n")
            line_length = len(data) - 2 if line_end < 0 else line_end
            if self.max_line is not None and line_length > self.max_line:
                self.refuse(conn, LimitRequestLine(line_length, self.max_line))
            elif line_end >= 0 and len(data) - line_end - 2 > self.max_headers:
                self.refuse(conn, LimitRequestHeaders("max buffer headers"))

    def start_body(self, conn, arrival, head_end):
        """The head is here: hand the connection over unless a body must follow, whose deadline starts now."""
        head = bytes(arrival.data[:head_end])
        kind, length, without_expect = body_framing(head)
        if kind == "length" and length == 0:
            self.hand_over(conn, whole=True)  # no body
            return
        if kind is None or (kind == "length" and length > self.max_body):
            # A body LogFlow refuses unread (413), or framing gunicorn should
            # judge: the thread reads nothing, or logflow.receive() bounds what it reads.
            self.hand_over(conn)
            return
        if without_expect is not None:
            # The client waits for this before it sends the body; gunicorn must not send it again.
            send(conn.sock, CONTINUE)
            arrival.data[:head_end] = without_expect
            head_end = len(without_expect)
        arrival.head_end = head_end
        if kind == "length":
            arrival.body_end = head_end + length
        else:
            arrival.chunk_at = head_end
        # Still the earliest deadline last: moved to the end of the dict.
        del self.parked[conn]
        arrival.deadline = time.monotonic() + self.client_timeout
        self.parked[conn] = arrival

    def check_body(self, conn, arrival):
        """Hand the connection over once its body is all here; refuse a chunked one larger than LogFlow takes (413)."""
        if arrival.body_end is not None:
            if len(arrival.data) >= arrival.body_end:
                self.hand_over(conn, whole=True)
            return
        try:
            end, arrival.chunk_at, arrival.payload, declared = chunked_end(
                arrival.data, arrival.chunk_at, self.max_line or MAX_REQUEST_LINE, arrival.payload)
        except ValueError:
            end = 0  # malformed: gunicorn's reader refuses it (400), from what is here already
        if end is not None:
            self.hand_over(conn, whole=end > 0)
        elif declared > self.max_body or len(arrival.data) - arrival.head_end > CHUNKED_FRAMING * self.max_body:
            # Refused here, as the application would: a thread given the body
            # before its end would wait for the rest, as long as a client trickled it.
            self.expire(conn, 413, "REQUEST ENTITY TOO LARGE", "the body is larger than %d bytes" % self.max_body)

    def hand_over(self, conn, whole=False):
        """Put what arrived back where gunicorn's parser reads first, and give the connection a thread.

        whole: the request's body is all here (see _keepalive_after).
        """
        data = self.unpark(conn)
        conn.whole_request = whole
        conn.sock.setblocking(True)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.parser.unreader = ParkedUnreader(conn.sock)
        conn.parser.unreader.park(bytes(data))
        conn.data_ready = True  # gthread would otherwise wait up to 5 s for data first
        conn.request_ready = True
        self.enqueue_req(conn)

    def refuse(self, conn, error):
        """Answer gunicorn's refusal of a head (in JSON, see handle_error) and close the connection."""
        self.unpark(conn)
        self.handle_error(None, conn.sock, conn.client, error)
        self.close_gracefully(conn)

    def unpark(self, conn):
        """Stop waiting for the connection's request; returns what arrived of it."""
        data = self.parked.pop(conn).data
        self.parked_bytes -= len(data)
        self.poller.unregister(conn.sock)
        return data

    def close(self, conn):
        self.nr_conns -= 1
        conn.close()

    def evict(self):
        """Close the connections parked longest while parked requests take too much memory, or others wait to connect.

        gthread stops accepting at worker_connections: parked connections
        must not be the reason for long, or idle ones would lock everyone
        else out. Only those parked for EVICT_AFTER go (see wait_for_and_dispatch_events).
        """
        while self.parked and self.parked_bytes > PARKED_BYTES:
            self.expire(next(iter(self.parked)), 503, "SERVICE UNAVAILABLE",
                        "too many requests are arriving at once; retry")
        while self.parked and self.nr_conns >= self.worker_connections:
            conn, arrival = next(iter(self.parked.items()))
            if self.evictable_in(arrival) > 0:
                break  # earliest deadline first: the others arrived later, or started their body later
            self.expire(conn, 503, "SERVICE UNAVAILABLE",
                        "too many connections are sending their requests slowly; retry")

    def evictable_in(self, arrival):
        """Seconds until a parked connection may be closed to make room: EVICT_AFTER into its head, or its body."""
        return arrival.deadline - self.client_timeout + EVICT_AFTER - time.monotonic()

    def wait_for_and_dispatch_events(self, timeout):
        """gthread's, but a full worker wakes when a parked connection may make room for another (see evict)."""
        if self.parked and self.nr_conns >= self.worker_connections:
            timeout = min(timeout, max(self.evictable_in(next(iter(self.parked.values()))), 0))
        super().wait_for_and_dispatch_events(timeout)
        self.evict()

    def expire(self, conn, status, reason, message):
        """Refuse a parked connection that sent part of a request; close one that sent nothing without a word.

        reason is written as the application's own status lines are (werkzeug's, in capitals).
        """
        if self.unpark(conn):
            write_json(conn.sock, status, reason, message)
            self.close_gracefully(conn)
        else:
            self.close(conn)

    def finish_request(self, conn, fs):
        """gthread's, except that a connection to close lingers in the poller, not in a loop that blocks it.

        gthread reads what the client still sends for up to 2 s on the event
        loop's own thread (util.close_graceful): a client that kept sending
        after its last response stalled every connection of the worker that long.
        """
        if fs.cancelled() or fs.exception() is not None or fs.result() is not False:
            if isinstance(getattr(conn.parser, "unreader", None), ParkedUnreader):
                conn.parser.unreader.settle()  # gthread looks for read-ahead in the buffer only
            super().finish_request(conn, fs)
        else:
            self.close_gracefully(conn)

    def close_gracefully(self, conn):
        """Half-close the connection, and close it once the client has (see LINGER_SECONDS), from the poller."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            self.close(conn)
            return
        self.lingering[conn] = [time.monotonic() + LINGER_SECONDS, 0]
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.linger, conn))

    def linger(self, conn, _sock=None):
        """Read and drop what a closing connection sends; close it at its end, or past LINGER_BYTES."""
        try:
            data = conn.sock.recv(LINGER_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        lingering = self.lingering.get(conn)
        if lingering is None:
            return  # closed by an earlier event of the same round
        lingering[1] += len(data)
        if not data or lingering[1] >= LINGER_BYTES:
            self.stop_lingering(conn)

    def stop_lingering(self, conn):
        del self.lingering[conn]
        self.poller.unregister(conn.sock)
        self.close(conn)

    def murder_pending(self):
        """gthread's expiry of waiting connections, run once a second: parked and lingering ones past their deadline too."""
        super().murder_pending()
        now = time.monotonic()
        for conn, (deadline, _) in list(self.lingering.items()):
            if deadline > now:
                break
            self.stop_lingering(conn)
        for conn, arrival in list(self.parked.items()):
            # A stopping worker closes at once the connections that sent nothing yet.
            if arrival.deadline <= now or not (self.alive or arrival.data):
                self.expire(conn, 408, "REQUEST TIMEOUT", "the request %s did not arrive within %g seconds" % (
                    "head" if arrival.head_end is None else "body", self.client_timeout))
            elif self.alive:
                break  # earliest deadline first: the rest expire later

    def _keepalive_after(self, conn, keepalive):
        """gthread's choice to keep a connection, without a thread waiting seconds for a body the application left.

        A body that was all here drains from memory; its deadline only bounds
        what should never happen. gunicorn checks the deadline before it reads:
        a thread the OS set aside for DRAIN_SECONDS on a busy machine closed a
        connection it had just answered "keep-alive" on, dropping the requests
        that followed.
        """
        seconds = self.client_timeout if getattr(conn, "whole_request", False) else DRAIN_SECONDS
        return keepalive and bool(conn.parser.finish_body(deadline=time.monotonic() + seconds))

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it refuses (its status, log line and access log), with a JSON body."""
        if isinstance(exc, InvalidHeader) and ":" not in exc.hdr:
            # gunicorn quotes a header line without a colon whole, in its log
            # too: "X-API-Key lf_..." would put the key there. Its name only.
            exc = InvalidHeader("%s (no colon; the rest of the line is not shown)"
                                % HEADER_NAME.match(exc.hdr).group(), req=exc.req)
        page = ErrorPage()
        super().handle_error(req, page, addr, exc)
        status, reason = page.status()
        message = str(exc)[:200] if status < 500 else "internal error; see the server log"
        write_json(client, status, reason, message)


class ParkedUnreader(SocketUnreader):
    """gunicorn's socket reader, handing out what arrived while the connection was parked first, a socket read at a time.

    gunicorn's chunked reader copies what a read returned beyond the chunk it
    parses, once per chunk: given a whole parked body in one read, a 1 MiB
    body of 100-byte chunks took 4.0 s (0.02 s read from the socket), and one
    of 1-byte chunks minutes of a thread.
    """

    def __init__(self, sock):
        super().__init__(sock)
        self.parked, self.position = b"", 0

    def park(self, data):
        """Serve data next, after anything still held, before what the socket sends."""
        self.parked, self.position = self.take_buffered() + data, 0

    def chunk(self, size_hint=None):
        if self.position == len(self.parked):
            return super().chunk(size_hint)
        # As much as SocketUnreader would recv() at once.
        size = self.mxchunk if not size_hint or size_hint <= self.mxchunk else min(size_hint, self.max_body_chunk)
        piece = self.parked[self.position:self.position + size]
        self.position += len(piece)
        return piece

    def settle(self):
        """Move what is left of the parked bytes into the buffer, behind what was read back there."""
        rest = self.parked[self.position:]
        self.parked, self.position = b"", 0
        if rest:
            self.buf.seek(0, io.SEEK_END)
            self.buf.write(rest)

    def take_buffered(self):
        """What is held and not read yet: the buffer, then what is left of the parked bytes."""
        self.settle()
        return super().take_buffered()


def body_framing(head):
    """(kind, length, head without its Expect: 100-continue or None) of the body a request head announces.

    kind is "length" (Content-Length; 0 without a body), "chunked", or None
    when gunicorn should judge the framing (several lengths, other transfer
    codings, HTTP/1.0 chunks...): only framing read the same way by gunicorn
    is waited for here.
    """
    request_line, *lines = head[:-4].split(b"\r\n")
    lengths, codings, expects = [], [], []
    for line in lines:
        name, _, value = line.partition(b":")
        name, value = name.lower(), value.strip(b" \t").lower()
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.extend(coding.strip(b" \t") for coding in value.split(b","))
        elif name == b"expect":
            expects.append(value)
    http11 = request_line.endswith(b" HTTP/1.1")
    if any(expect != b"100-continue" for expect in expects):
        return None, None, None  # gunicorn's to answer (417)
    without_expect = None
    if expects and http11:
        # However often it is sent; HTTP/1.0 ignores it, and so does gunicorn.
        without_expect = b"\r\n".join([request_line] + [
            line for line in lines if line.partition(b":")[0].lower() != b"expect"]) + b"\r\n\r\n"
    # Chunked last and once, after codings gunicorn passes through (it reads gzip, chunked as chunked).
    if codings[-1:] == [b"chunked"] and set(codings[:-1]) <= PASSED_CODINGS and not lengths and http11:
        return "chunked", None, without_expect
    if len(lengths) == 1 and lengths[0].isdigit() and not codings:
        return "length", int(lengths[0]), without_expect
    if not lengths and not codings:
        return "length", 0, without_expect  # no body
    return None, None, None


# Transfer codings gunicorn's parser accepts before chunked, leaving them to the application.
PASSED_CODINGS = {b"gzip", b"deflate", b"compress", b"identity"}


def has_bare_lf(data, start):
    """Whether data holds, from start on, an LF without the CR that must come before it."""
    at = data.find(b"\n", start)
    while at >= 0:
        if at == 0 or data[at - 1] != ord("\r"):
            return True
        at = data.find(b"\n", at + 1)
    return False


def chunked_end(data, at, max_line, payload=0):
    """(end of the chunked body or None while incomplete, where to resume, payload before it, payload announced so far).

    The scan starts at the chunk at `at`, after `payload` bytes of chunk data;
    ValueError if the framing is malformed. Resuming where the last complete
    chunk ended keeps a body trickled a byte at a time from being scanned
    again on every byte.
    """
    while True:
        line_end = data.find(b"\r\n", at, at + max_line + 2)
        if line_end < 0:
            if len(data) - at > max_line:
                raise ValueError("chunk-size line too long")
            return None, at, payload, payload
        size = bytes(data[at:line_end]).split(b";", 1)[0].rstrip(b" \t")
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise ValueError("chunk size is not hexadecimal")
        size = int(size, 16)
        if size == 0:
            # The last chunk, then trailer lines up to an empty one.
            if data[line_end + 2:line_end + 4] == b"\r\n":
                return line_end + 4, at, payload, payload
            end = data.find(b"\r\n\r\n", line_end + 2)
            return (end + 4 if end >= 0 else None), at, payload, payload
        next_at = line_end + 2 + size + 2
        if next_at > len(data):
            return None, at, payload, payload + size
        at, payload = next_at, payload + size


def head_limits(cfg):
    """(longest request line or None, longest header block) gunicorn's parser takes, as http/message.py reckons them."""
    line = cfg.limit_request_line
    line = None if line == 0 else MAX_REQUEST_LINE if line < 0 or line > MAX_REQUEST_LINE else line
    fields = cfg.limit_request_fields if 0 < cfg.limit_request_fields <= MAX_HEADERS else MAX_HEADERS
    field_size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else DEFAULT_MAX_HEADERFIELD_SIZE
    return line, fields * (field_size + 2) + 4


class ErrorPage:
    """Stands in for the client while gunicorn writes its HTML error page, keeping its status line only."""

    def __init__(self):
        self.written = b""

    def gettimeout(self):
        return 0.0  # gunicorn's util.write_nonblock then writes at once

    def sendall(self, data):
        self.written += data

    def status(self):
        """(status code, reason) gunicorn wrote; 500 if it wrote none."""
        parts = self.written.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) == 3 and parts[1].isdigit():
            return int(parts[1]), parts[2].decode("latin-1")
        return 500, "Internal Server Error"


def write_json(sock, status, reason, message):
    """Send a whole {"error": message} response that closes the connection."""
    body = orjson.dumps({"error": message})
    # A 503 here is room running out for a moment: clients retry, soon (shippers honour Retry-After).
    retry = b"Retry-After: 1\r\n" if status == 503 else b""
    send(sock, b"HTTP/1.1 %d %s\r\nConnection: close\r\n%sContent-Type: application/json\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (status, reason.encode("latin-1"), retry, len(body), body))


def send(sock, response):
    """Send a short response without blocking (best effort: it fits the socket's buffer, or the client is not reading)."""
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.sendall(response)
    except OSError:
        pass  # the client is gone or reads nothing: gunicorn's own pages are sent the same way
    finally:
        sock.settimeout(timeout)
