"""The viewer's users from the command line: create-user, list-users, set-password, remove-user; sessions."""
import datetime
import os
import pty
import select
import signal
import sys
import time

import pytest

import models
from models import Grant, Project, Session, User
from processes import ROOT, dev_mode_environment


PASSWORD = "correct horse battery"


@pytest.fixture
def projects(bound):
    with models.database.connection_context():
        return [Project.create(name=name) for name in ("shop", "web", "billing")]


def stored_user(name):
    with models.database.connection_context():
        return User.get_or_none(User.name == name)


def readable_names(name):
    with models.database.connection_context():
        return [project.name for project in stored_user(name).readable_projects()]


def open_session(name):
    """A session token of the user, as a sign-in makes one."""
    with models.database.connection_context():
        return Session.open(stored_user(name))


def session_user(token):
    """The name of the user a session token signs in, or None once it is ended."""
    with models.database.connection_context():
        found = Session.find(token)
        return found.user.name if found else None


def test_create_user_stores_only_a_slow_hash_and_the_projects_given(run, projects):
    result = run("create-user", "ada", "--project", "shop", "--project", "3", "--password-stdin",
                 stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "user ada may read billing, shop\n"
    assert PASSWORD not in result.output
    user = stored_user("ada")
    # werkzeug's default: scrypt, salted; the password itself is nowhere in the row.
    assert user.password_hash.startswith("scrypt:") and PASSWORD not in str(user.__data__)
    assert readable_names("ada") == ["billing", "shop"]
    with models.database.connection_context():
        assert User.authenticate("ada", PASSWORD).name == "ada"
        assert User.authenticate("ada", PASSWORD + " ") is None
        assert User.authenticate("nobody", PASSWORD) is None
        assert user.may_read(projects[0]) and not user.may_read(projects[1])


def test_all_projects_covers_projects_created_later(run, projects):
    assert run("create-user", "root", "--all-projects", "--password-stdin", stdin=PASSWORD).exit_code == 0
    with models.database.connection_context():
        Project.create(name="later")
        assert Grant.select().count() == 0
    assert readable_names("root") == ["billing", "later", "shop", "web"]


def test_list_users_shows_names_sessions_and_projects_escaped(run, projects):
    run("create-user", "ada", "--project", "web", "--password-stdin", stdin=PASSWORD)
    run("create-user", "root", "--all-projects", "--password-stdin", stdin=PASSWORD)
    with models.database.connection_context():
        # Names manage.py refuses, as an earlier version or another tool could store them.
        Project.update(name="web\x1b]0;owned\x07").where(Project.name == "web").execute()
        User.update(name="ada\u202e").where(User.name == "ada").execute()
    open_session("root")
    open_session("root")
    result = run("list-users")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "name                     sessions projects",
        "ada\\u202e                0        web\\x1b]0;owned\\x07",
        "root                     2        all projects"]


def test_set_password_changes_it_and_ends_that_users_sessions(run, projects):
    run("create-user", "ada", "--project", "shop", "--password-stdin", stdin=PASSWORD)
    run("create-user", "bob", "--project", "shop", "--password-stdin", stdin=PASSWORD)
    tokens = [open_session("ada"), open_session("ada")]
    other = open_session("bob")
    result = run("set-password", "ada", "--password-stdin", stdin="a new passphrase\r\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "password of ada changed; 2 sessions ended\n"
    assert "passphrase" not in result.output
    assert [session_user(token) for token in tokens] == [None, None]
    assert session_user(other) == "bob"
    with models.database.connection_context():
        assert User.authenticate("ada", PASSWORD) is None
        assert User.authenticate("ada", "a new passphrase").name == "ada"


def test_remove_user_ends_their_sessions_and_grants(run, projects):
    run("create-user", "ada", "--project", "shop", "--project", "web", "--password-stdin", stdin=PASSWORD)
    run("create-user", "bob", "--project", "shop", "--password-stdin", stdin=PASSWORD)
    token, other = open_session("ada"), open_session("bob")
    result = run("remove-user", "ada")
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed user ada; 1 session ended\n"
    assert stored_user("ada") is None and session_user(token) is None
    assert session_user(other) == "bob"
    with models.database.connection_context():
        assert [grant.user.name for grant in Grant.select()] == ["bob"]
    again = run("remove-user", "ada")
    assert again.exit_code == 1 and again.stderr == "error: no user named 'ada'\n"


@pytest.mark.parametrize("arguments, stdin, error", [
    (["ada", "--password-stdin"], PASSWORD, "give --project P (once per project) or --all-projects"),
    (["ada", "--project", "shop", "--all-projects", "--password-stdin"], PASSWORD,
     "give --project P (once per project) or --all-projects"),
    (["ada", "--project", "nowhere", "--password-stdin"], PASSWORD, "no project named 'nowhere'"),
    (["ada", "--all-projects", "--password-stdin"], "seven77\n",
     "a password needs at least 8 characters; nothing was changed"),
    (["ada", "--all-projects", "--password-stdin"], "", "a password needs at least 8 characters; nothing was changed"),
    # CliRunner's standard input is no terminal: the password is never read from it unasked.
    (["ada", "--all-projects"], PASSWORD + "\n" + PASSWORD + "\n",
     "no terminal to ask for the password on: give it on standard input with --password-stdin"),
    ([" ", "--all-projects", "--password-stdin"], PASSWORD, "a user name cannot be empty or blank"),
    (["ada ", "--all-projects", "--password-stdin"], PASSWORD, "a user name cannot start or end with a space"),
    (["ada\x1b[2J", "--all-projects", "--password-stdin"], PASSWORD, "a user name cannot hold control characters"),
])
def test_create_user_refusals_create_nobody(run, projects, arguments, stdin, error):
    result = run("create-user", *arguments, stdin=stdin)
    assert (result.exit_code, result.stderr) == (1, "error: %s\n" % error)
    with models.database.connection_context():
        assert User.select().count() == 0


def test_a_name_is_taken_once(run, projects):
    assert run("create-user", "ada", "--all-projects", "--password-stdin", stdin=PASSWORD).exit_code == 0
    again = run("create-user", "ada", "--project", "shop", "--password-stdin", stdin="other password")
    assert again.exit_code == 1
    assert again.stderr == "error: a user named 'ada' exists already (set-password changes a password)\n"
    with models.database.connection_context():
        assert User.authenticate("ada", PASSWORD) is not None and Grant.select().count() == 0


def test_init_db_creates_the_user_tables(run, bound):
    tables = [User, Grant, Session]
    with models.database.connection_context():
        models.database.drop_tables(tables)
        assert not any(models.database.table_exists(model._meta.table_name) for model in tables)
    result = run("init-db")
    assert result.exit_code == 0, result.output
    with models.database.connection_context():
        assert all(models.database.table_exists(model._meta.table_name) for model in tables)


def test_sessions_lapse_when_idle_and_note_their_use(bound, projects):
    with models.database.connection_context():
        user = User(name="ada", all_projects=True)
        user.set_password(PASSWORD)
        user.save()
        token = Session.open(user)
        stored = Session.get()
        assert stored.token_hash == models.hash_key(token) and token not in str(stored.__data__)
        # Used a while ago: found, and its use noted.
        a_while_ago = models.utcnow() - datetime.timedelta(seconds=Session.TOUCH_SECONDS + 5)
        Session.update(last_used_at=a_while_ago).execute()
        assert Session.find(token).user.name == "ada"
        assert Session.get().last_used_at > a_while_ago
        # Idle too long: signed out, and forgotten at the next sign-in.
        idle = models.utcnow() - datetime.timedelta(seconds=Session.IDLE_SECONDS + 1)
        Session.update(last_used_at=idle).execute()
        assert Session.find(token) is None
        Session.end_idle()
        assert Session.select().count() == 0


def on_terminal(arguments, env, answers, timeout=60):
    """Run manage.py on a new pseudo-terminal, typing each answer after its prompt; (exit status, what the terminal showed)."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: manage.py, with the terminal as its controlling one
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "manage.py", *arguments], env)
    shown, deadline, answers = b"", time.monotonic() + timeout, list(answers)
    answered = 0  # where the output after the last answer starts
    while time.monotonic() < deadline:
        # Only once its prompt is shown: getpass turns echo off before, and drops what was typed earlier.
        if answers and shown[answered:].rstrip().endswith(b":"):
            os.write(terminal, answers.pop(0).encode() + b"\n")
            answered = len(shown)
        ready, _, _ = select.select([terminal], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    else:
        os.kill(pid, signal.SIGKILL)  # still waiting for input: fails below with what it showed
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_the_password_is_asked_twice_on_the_terminal_and_never_echoed(tmp_path):
    env = dev_mode_environment(tmp_path)
    status, shown = on_terminal(["create-user", "ada", "--all-projects"], env, [PASSWORD, PASSWORD + "!"])
    assert status == 1 and "the two passwords differ; nothing was changed" in shown, shown
    status, shown = on_terminal(["create-user", "ada", "--all-projects"], env, [PASSWORD, PASSWORD])
    assert status == 0 and "Password: " in shown and "Password again: " in shown, shown
    assert "user ada may read all projects" in shown and PASSWORD not in shown
    status, shown = on_terminal(["list-users"], env, [])
    assert status == 0 and "ada                      0        all projects" in shown, shown
