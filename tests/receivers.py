"""Real receivers of alert notifications on 127.0.0.1: an HTTP server (webhooks, Slack) and an SMTP server."""
import contextlib
import http.server
import subprocess
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from helpers import wait_for
from processes import free_port


class Receiver(http.server.ThreadingHTTPServer):
    """An HTTP server that keeps every POST and answers from a plan: a status, or "hang" until closed."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.received = []  # (headers as a dict, raw body), in arrival order
        self.plan = []  # answers for the next requests, then 200
        self.lock = threading.Lock()
        self.closing = threading.Event()

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook" % self.server_port

    def next_answer(self):
        with self.lock:
            return self.plan.pop(0) if self.plan else 200

    def wait_for(self, count, timeout=30):
        """The first `count` requests, once they have arrived."""
        wait_for(lambda: len(self.received) >= count, timeout=timeout, message="%d notifications" % count)
        return self.received[:count]


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.received.append(({name.lower(): value for name, value in self.headers.items()}, body))
        answer = self.server.next_answer()
        if answer == "hang":
            self.server.closing.wait(60)
            return
        self.send_response(answer)
        if answer == 429:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def receiver():
    """A Receiver serving from a thread; yields it."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Mailbox:
    """aiosmtpd's handler: keeps each message's envelope and content."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@contextlib.contextmanager
def smtp_server(tls_context=None, login=None):
    """A real SMTP server on 127.0.0.1; yields (its smtp:// URL, its Mailbox).

    With tls_context it offers STARTTLS and requires it; with login=(user,
    password) it requires that login, over TLS only.
    """
    mailbox = Mailbox()
    port = free_port()
    options = {}
    if tls_context is not None:
        options.update(tls_context=tls_context, require_starttls=True)
    if login is not None:
        # handled=False: aiosmtpd then answers a failure with 535 (True means "answered already").
        options.update(auth_required=True, auth_require_tls=True,
                       authenticator=lambda server, session, envelope, mechanism, data: AuthResult(
                           success=(data.login.decode(), data.password.decode()) == login, handled=False))
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield "smtp://127.0.0.1:%d" % port, mailbox
    finally:
        controller.stop()


def certificate(folder):
    """A self-signed certificate for 127.0.0.1, made by openssl: (its file, its key's file)."""
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key
