"""The README's send-and-look block, run as a person runs it: pasted into a terminal beside `honcho start`.

The block is the code fence after `<!-- send-and-look -->` in README.md. The test
copies the repository as a clone has it (no data, logs or .env), starts `honcho
start` there in dev mode, waits until both processes say they have started, and
runs the block with bash on a pseudo-terminal of its own, so that create-user
asks for the password as it asks a person, and the test types it.

The block runs verbatim but for one thing: its URL line's port, 5000, becomes the
port honcho is given here (PORT), as the README tells a person whose port 5000 is
taken. It runs whole, as a paste runs, once the consumer is idle as a person finds
it: the README makes the read key between the POST and `tail`, time enough for the
consumer to store the log, and says so; if that ever stopped being true, `tail`
would show nothing and this test would fail.

Then it checks what was stored and shown, signs in as the new user as a browser
would, and stops honcho with Ctrl-C's signal, checking what the README says of it.
"""
import contextlib
import http.cookiejar
import json
import os
import pathlib
import pty
import re
import secrets
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import types
import urllib.parse
import urllib.request

import pytest

from helpers import wait_for
from processes import ROOT, free_port, get_status

README = pathlib.Path(ROOT) / "README.md"
DOCUMENTED_URL = "URL=http://127.0.0.1:5000"
# The password the test types at create-user's prompts, made anew for each run.
PASSWORD = secrets.token_urlsafe(16)
# What honcho needs to start both processes, and the block to run, on a busy 2-core machine.
START_TIMEOUT = 60
BLOCK_TIMEOUT = 120
# An idle consumer looks for work less and less often: from every 0.05 s (the Procfile's --delay) to
# every 0.5 s (--max-delay) after about 3.3 s (huey's backoff: 1.15 times longer each empty poll).
# A person pastes the block later than that, when a log waits longest to be stored, and so does the
# test. Not a synchronisation: nothing is awaited. With `tail` right after the POST, 7 runs in 20
# failed this way; with the block as the README has it, none.
IDLE_SECONDS = 4


def send_and_look():
    """The code block that follows `<!-- send-and-look -->` in README.md."""
    match = re.search(r"<!-- send-and-look -->\s*```bash\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md has no ```bash block after <!-- send-and-look -->"
    return match.group(1)


def clone_of_repository(destination):
    """The repository's files as a clone has them, with today's changes: no data, logs, .env or .git."""
    if shutil.which("git") and os.path.isdir(os.path.join(ROOT, ".git")):
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            source = os.path.join(ROOT, name)
            if os.path.isfile(source):  # a file deleted in the work tree is still listed until committed
                os.makedirs(os.path.join(destination, os.path.dirname(name)), exist_ok=True)
                shutil.copy2(source, os.path.join(destination, name))
    else:
        shutil.copytree(ROOT, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", "data", "logs", ".env", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"))


def person_environment(tmp_path, port):
    """A shell as the README leaves it: the virtualenv's `python` first on PATH, no LogFlow settings (dev mode)."""
    bin_dir = tmp_path / "venv-bin"
    bin_dir.mkdir()
    # `. .venv/bin/activate` puts a `python` on PATH; this interpreter has the requirements installed.
    # A script, not a symlink: a virtualenv's interpreter must be started by its own path to find its packages.
    (bin_dir / "python").write_text('#!/bin/sh\nexec %s "$@"\n' % shlex.quote(sys.executable))
    (bin_dir / "python").chmod(0o755)
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("DATABASE_URL", "REDIS_URL", "PYTHONPATH", "PORT")
                   and not name.startswith("LOGFLOW_")}
    environment["PATH"] = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), environment["PATH"]])
    environment["PORT"] = str(port)
    return environment


class Honcho:
    """`honcho start` in a folder, as a terminal's foreground job: its own process group, output in a file."""

    def __init__(self, folder, environment, log_path):
        command = shutil.which("honcho", path=environment["PATH"])
        assert command, "honcho is not installed: it is in requirements.txt"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen([command, "start"], cwd=folder, env=environment, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self):
        return self.log_path.read_text(errors="replace")

    def running(self):
        if self.popen.poll() is not None:
            raise AssertionError("honcho exited with %s:\n%s" % (self.popen.returncode, self.text()))
        return True

    def press_ctrl_c(self, timeout=30):
        """SIGINT to the job's process group, as a terminal sends it; returns once honcho has exited."""
        os.killpg(self.popen.pid, signal.SIGINT)
        self.popen.wait(timeout=timeout)

    def stop(self):
        """Whatever is left after a failure: SIGTERM to honcho's group, then SIGKILL."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def take_terminal():
    """In the child, after setsid: make stdin, the new pseudo-terminal, its controlling terminal (for getpass)."""
    import fcntl
    import termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(script, folder, environment, password, timeout=BLOCK_TIMEOUT):
    """bash -e running script on a new pseudo-terminal, typing password at each prompt; (status, what it showed)."""
    main, terminal = pty.openpty()
    shell = subprocess.Popen(["bash", "-e", script], cwd=folder, env=environment, stdin=terminal, stdout=terminal,
                             stderr=terminal, start_new_session=True, preexec_fn=take_terminal)
    os.close(terminal)
    shown, typed = b"", 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("the block did not finish within %d s; it showed:\n%s"
                                     % (timeout, shown.decode(errors="replace")))
            if not select.select([main], [], [], remaining)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the shell and everything it started have closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            # getpass turns echo off, then prints the prompt: typing after it is never shown.
            while typed < shown.count(b"Password: ") + shown.count(b"Password again: "):
                os.write(main, password.encode() + b"\n")
                typed += 1
        status = shell.wait(timeout=30)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        os.close(main)
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown.decode(errors="replace").replace("\r\n", "\n"))
    return status, text


def signed_in_browser(base_url, name, password):
    """An opener holding the session of a sign-in through the viewer's form, as a browser sends it."""
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with browser.open(base_url + "/ui/login", timeout=15) as form:
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.read().decode()).group(1)
    fields = urllib.parse.urlencode({"username": name, "password": password, "csrf_token": token}).encode()
    with browser.open(base_url + "/ui/login", data=fields, timeout=15) as answer:
        assert answer.url == base_url + "/ui/", "sign-in did not lead to the overview but to %s" % answer.url
    return browser


@pytest.fixture
def started(tmp_path):
    """`honcho start` in a clone of the repository on a free port: its folder, environment, base URL and honcho."""
    folder = tmp_path / "logflow"
    folder.mkdir()
    clone_of_repository(str(folder))
    cloned = set(os.listdir(folder))
    port = free_port()
    environment = person_environment(tmp_path, port)
    honcho = Honcho(folder, environment, tmp_path / "honcho.log")
    base_url = "http://127.0.0.1:%d" % port
    try:
        # A person sees both halves start before pasting; so does the test.
        wait_for(lambda: honcho.running() and get_status(base_url + "/healthz") == 200
                 and "consumer started" in honcho.text(), timeout=START_TIMEOUT, message="honcho start")
        yield types.SimpleNamespace(folder=folder, environment=environment, base_url=base_url, honcho=honcho,
                                    cloned=cloned)
    finally:
        honcho.stop()


def test_the_send_and_look_block_works_as_pasted(started, tmp_path):
    folder, base_url, honcho = started.folder, started.base_url, started.honcho
    block = send_and_look()
    assert block.count(DOCUMENTED_URL + "\n") == 1 and block.startswith(DOCUMENTED_URL + "\n")
    script = tmp_path / "send-and-look.sh"
    script.write_text(block.replace(DOCUMENTED_URL + "\n", "URL=%s\n" % base_url))
    time.sleep(IDLE_SECONDS)
    status, shown = run_in_terminal(str(script), folder, started.environment, PASSWORD)
    assert status == 0, "the block failed (%s); it showed:\n%s\n\nhoncho:\n%s" % (status, shown, honcho.text())

    # What the block sends, and who it lets in, as the README writes them.
    record = json.loads(re.search(r"-d '(\{.*\})'", block).group(1))
    project, user = re.search(r"create-user (\S+) --project (\S+)", block).group(2, 1)
    lines = shown.splitlines()
    assert '{"accepted":1,"rejected":0,"errors":[]}' in lines
    # tail: time, level, message, metadata; printed before the GET's JSON.
    tailed = re.compile(r"^\S+Z %s +%s  %s$" % (record["level"].upper(), re.escape(record["message"]),
                                                re.escape(json.dumps(record["metadata"], separators=(",", ":")))))
    tail_line = next((number for number, line in enumerate(lines) if tailed.match(line)), None)
    assert tail_line is not None, "tail did not show the log:\n" + shown
    answers = [number for number, line in enumerate(lines) if line.startswith('{"logs":')]
    assert len(answers) == 1 and answers[0] > tail_line, shown
    [read] = json.loads(lines[answers[0]])["logs"]
    assert (read["message"], read["level"], read["metadata"]) == (
        record["message"], record["level"].upper(), record["metadata"])
    assert "user %s may read %s" % (user, project) in lines
    assert PASSWORD not in shown

    # Dev mode keeps everything in ./data and ./logs: `rm -rf data logs` starts over.
    assert set(os.listdir(folder)) - started.cloned - {"__pycache__"} == {"data", "logs"}
    with contextlib.closing(sqlite3.connect(folder / "data" / "logflow.db")) as database:
        assert database.execute("SELECT message FROM logs").fetchall() == [(record["message"],)]

    def filed():
        return [path for path in (folder / "logs").rglob("*.log") if record["message"] in path.read_text()]
    wait_for(filed, message="the log in a daily file under ./logs")

    # The person the block created signs in at $URL/ui/ and reads the project's logs there.
    browser = signed_in_browser(base_url, user, PASSWORD)
    with browser.open(base_url + "/ui/", timeout=15) as overview:
        assert project in overview.read().decode()
    with browser.open(base_url + "/logs?project=" + project, timeout=15) as answer:
        assert [log["id"] for log in json.loads(answer.read())["logs"]] == [read["id"]]

    # Ctrl-C: honcho sends each process SIGTERM, once, and both stop; the consumer's threads
    # finish (huey's graceful stop) before honcho would send SIGKILL, 5 s on.
    honcho.press_ctrl_c()
    said = honcho.text()
    for process in ("web.1", "worker.1"):
        assert said.count("sending SIGTERM to %s " % process) == 1, said
        assert "%s stopped" % process in said, said
    assert "consumer worker stopped" in said and "SIGKILL" not in said, said
    # A first start says nothing alarming: no error, no traceback, from either half.
    assert " ERROR " not in said and "Traceback" not in said, said
