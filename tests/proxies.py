"""nginx in front of LogFlow for the tests, with deploy/nginx's snippets as they are, and an HTTP client to talk through it.

start_nginx() runs Debian's nginx in the foreground with a main configuration
of its own (its files in a folder of the test's, free ports of 127.0.0.1, plain
HTTP), whose two servers include deploy/nginx/logflow-public.conf and
logflow-internal.conf; Client sends requests from a chosen loopback address
(127.0.0.2, ...), as different clients of nginx would.
"""
import http.client
import json
import os
import re
import shutil
import urllib.parse
from http.cookies import SimpleCookie

from conftest import unavailable
from helpers import wait_for
from processes import ROOT, free_port

NGINX_DIR = os.path.join(ROOT, "deploy", "nginx")
PASSWORD = "correct horse battery"
# What systemd gives every service before Environment= and EnvironmentFile= (nginx gets it too).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def program(name, *places):
    """The path of an installed program; in CI a missing one fails the test, elsewhere it skips."""
    found = shutil.which(name) or next((path for path in places if os.access(path, os.X_OK)), None)
    if found is None:
        unavailable("%s is not installed (.ci/run installs it)" % name)
    return found


class Answer:
    """An HTTP answer: status, headers, body."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:300])


class Client:
    """Requests from one source address (127.0.0.x), keeping the cookies set, following no redirect."""

    def __init__(self, port, source="127.0.0.1"):
        self.port, self.source, self.cookies = port, source, {}

    def request(self, method, path, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join("%s=%s" % pair for pair in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        finally:
            connection.close()
        for header in answer.headers.get_all("Set-Cookie") or []:
            self.cookies.update((name, morsel.value) for name, morsel in SimpleCookie(header).items())
        return answer

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def post_logs(self, key, body, headers=None):
        return self.request("POST", "/logs", body, dict({"X-API-Key": key, "Content-Type": "application/json"},
                                                        **(headers or {})))

    def sign_in(self, name, password=PASSWORD, headers=None):
        """Send the sign-in form as a browser would (its CSRF token from the form); returns the answer to the POST."""
        form = self.get("/ui/login", headers)
        token = re.search(rb'name="csrf_token" value="([^"]+)"', form.body)[1].decode()
        body = "csrf_token=%s&username=%s&password=%s" % tuple(map(urllib.parse.quote, (token, name, password)))
        return self.request("POST", "/ui/login", body, dict({"Content-Type": "application/x-www-form-urlencoded"},
                                                            **(headers or {})))


NGINX_CONF = """\
daemon off;
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    upstream logflow_web {{
        server 127.0.0.1:{web};
    }}
    upstream logflow_viewer {{
        server 127.0.0.1:{viewer};
    }}
    server {{
        listen 127.0.0.1:{public};
        include {snippets}/logflow-public.conf;
    }}
    server {{
        listen 127.0.0.1:{internal};
        include {snippets}/logflow-internal.conf;
    }}
}}
"""


def start_nginx(directory, web, viewer, spawn):
    """nginx in the foreground with its files in directory, the deploy/ snippets on free ports; returns (public, internal)."""
    binary = program("nginx", "/usr/sbin/nginx")
    directory.mkdir()
    public, internal = free_port(), free_port()
    # As root, nginx's workers would run as nobody, who cannot enter pytest's folders.
    (directory / "nginx.conf").write_text(NGINX_CONF.format(
        user="user root;" if os.geteuid() == 0 else "", directory=directory, web=web, viewer=viewer,
        public=public, internal=internal, snippets=NGINX_DIR))
    nginx = spawn("nginx", [binary, "-p", str(directory), "-c", str(directory / "nginx.conf"),
                            "-e", str(directory / "error.log")], {"PATH": SYSTEMD_PATH})

    def answering():
        nginx.check_alive()
        try:
            return Client(public).get("/").status and Client(internal).get("/").status
        except OSError:
            return False
    wait_for(answering, timeout=30, message="nginx to listen")
    return public, internal
