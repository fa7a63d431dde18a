"""The viewer's server side, through Flask's test client: sign-in, sessions, CSRF, the throttle, headers, 404s."""
import datetime
import os
import re
import stat
import subprocess
import sys

import pytest

import config
import models
import signin
import tasks
from helpers import wait_for
from logflow import create_app
from models import ApiKey, Log, Project, Session, User
from processes import ROOT
from test_keys import break_database
from test_manage import closed_port, unreachable_redis_url  # noqa: F401  (the fixtures)

PASSWORD = "correct horse battery"
HOSTILE = "<img src=x onerror=alert(1)>"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none';"
       " form-action 'self'")


def add_user(name, *projects, all_projects=False):
    with models.database.connection_context():
        user = User(name=name, all_projects=all_projects)
        user.set_password(PASSWORD)
        user.save()
        for project in projects:
            models.Grant.create(user=user, project=project)
        return user


def csrf_of(page):
    """The CSRF token a page's forms carry."""
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def sign_in(client, name, password=PASSWORD, address=None, next_page=None):
    """Fill in and send the sign-in form as a browser would; returns the answer to the POST."""
    headers = {"X-Forwarded-For": address} if address else {}
    form = client.get("/ui/login", headers=headers)
    data = {"username": name, "password": password, "csrf_token": csrf_of(form)}
    if next_page is not None:
        data["next"] = next_page
    return client.post("/ui/login", data=data, headers=headers)


def session_cookie(response):
    [cookie] = [value for value in response.headers.getlist("Set-Cookie") if value.startswith("logflow_session=")]
    return cookie


@pytest.fixture
def shop(bound):
    with models.database.connection_context():
        return Project.create(name="shop")


def test_home_leads_to_the_viewer_and_the_viewer_to_sign_in(client):
    assert client.get("/").headers["Location"] == "/ui/"
    answer = client.get("/ui/")
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/login"
    page = client.get("/ui/login")
    assert page.status_code == 200
    assert re.search(r'<label for="username">Username</label>\s*<input id="username" name="username"', page.text)
    assert re.search(r'<label for="password">Password</label>\s*<input id="password" name="password"'
                     r' type="password"', page.text)
    assert '<button type="submit">Sign in</button>' in page.text


@pytest.mark.parametrize("path", ["/ui/login", "/ui/", "/ui/projects/shop", "/ui/static/viewer.css",
                                  "/ui/nothing-here"])
def test_every_ui_response_carries_the_security_headers(client, shop, path):
    add_user("ada", shop)
    sign_in(client, "ada")
    answer = client.get(path)
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "same-origin"


def test_a_database_outage_is_a_503_page_saying_when_to_retry(bound, shop):
    client = create_app(bound.replace(retry_after_seconds=7)).test_client()
    add_user("ada", shop)
    sign_in(client, "ada")
    break_database(bound)
    try:
        answer = client.get("/ui/projects/shop")
    finally:
        models.bind_database(bound)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"
    assert "The database is unavailable. Try again shortly." in answer.text


def test_signing_in_without_redis_is_a_503_page_saying_when_to_retry(bound, shop, unreachable_redis_url):
    if not bound.redis_url:
        pytest.skip("dev mode's spool is a file beside the database")
    client = create_app(bound.replace(redis_url=unreachable_redis_url, retry_after_seconds=7)).test_client()
    add_user("ada", shop)
    answer = sign_in(client, "ada")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"
    assert "Signing in is unavailable. Try again shortly." in answer.text


def test_the_pages_hold_no_inline_script_or_style(client, shop):
    add_user("ada", shop)
    pages = [client.get("/ui/login").text, sign_in(client, "ada") and client.get("/ui/").text,
             client.get("/ui/projects/shop").text]
    for text in pages:
        # Scripts only from files (script-src 'self'), never inline.
        assert not re.search(r"<script(?![^>]*\ssrc=\"/ui/static/)|<style|\sstyle=|\son[a-z]+=", text)


def test_the_cookie_is_httponly_lax_and_secure_behind_an_https_proxy(app, shop):
    add_user("ada", shop)
    plain = session_cookie(sign_in(app.test_client(), "ada"))
    assert "; HttpOnly" in plain and "; SameSite=Lax" in plain and "; Path=/;" in plain + ";"
    assert "Secure" not in plain
    https = {"X-Forwarded-Proto": "https"}
    assert "; Secure" in session_cookie(app.test_client().get("/ui/login", headers=https))
    # From a public address, no proxy of ours, the header is the client's own word: ignored.
    direct = app.test_client().get("/ui/login", headers=https, environ_base={"REMOTE_ADDR": "8.8.8.8"})
    assert "Secure" not in session_cookie(direct)


def test_sign_in_shows_only_the_persons_projects_and_sign_out_ends_the_session(client, shop, bound):
    with models.database.connection_context():
        web = Project.create(name="web")
        Project.create(name="billing")
    add_user("ada", shop, web)
    answer = sign_in(client, "ada")
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/"
    overview = client.get("/ui/")
    assert overview.status_code == 200
    assert re.findall(r'<li><a href="([^"]+)">([^<]+)</a>', overview.text) == [
        ("/ui/projects/shop", "shop"), ("/ui/projects/web", "web")]
    cookie = client.get_cookie("logflow_session", path="/").value
    # Sign-out is a POST carrying the page's token.
    assert client.post("/ui/logout").status_code == 400
    assert client.get("/ui/").status_code == 200
    answer = client.post("/ui/logout", data={"csrf_token": csrf_of(overview)})
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/login"
    assert client.get("/ui/").headers["Location"] == "/ui/login"
    # The old cookie, kept by someone, signs nobody in: the session ended on the server.
    replay = create_app(bound).test_client()
    replay.set_cookie("logflow_session", cookie, path="/")
    assert replay.get("/ui/").headers["Location"] == "/ui/login"


def test_a_form_without_this_browsers_token_is_refused(client, shop, bound):
    add_user("ada", shop)
    answer = client.post("/ui/login", data={"username": "ada", "password": PASSWORD})
    assert answer.status_code == 400 and "This form has expired" in answer.text
    # Another browser's token, in this browser's form: refused too.
    other = create_app(bound).test_client()
    answer = client.post("/ui/login", data={"username": "ada", "password": PASSWORD,
                                            "csrf_token": csrf_of(other.get("/ui/login"))})
    assert answer.status_code == 400
    assert client.get("/ui/").status_code == 302
    with models.database.connection_context():
        assert Session.select().count() == 0


def test_the_token_changes_when_signing_in(client, shop):
    add_user("ada", shop)
    before = csrf_of(client.get("/ui/login"))
    sign_in(client, "ada")
    assert csrf_of(client.get("/ui/")) != before


def test_another_project_is_a_404_exactly_as_an_unknown_one(client, shop, bound):
    with models.database.connection_context():
        secret = Project.create(name="secret")
    add_user("ada", shop)
    sign_in(client, "ada")
    forbidden, unknown = client.get("/ui/projects/secret"), client.get("/ui/projects/nothing")
    by_id = client.get("/ui/projects/%d" % secret.id)
    assert forbidden.status_code == unknown.status_code == by_id.status_code == 404
    assert forbidden.data == unknown.data == by_id.data
    assert client.get("/ui/projects/shop").status_code == 200


def test_the_project_page_reads_the_newest_100_logs_through_get_logs_and_shows_no_key(client, shop, bound):
    """The page is a shell; its script reads GET /logs?project=... with the session, never a key."""
    with models.database.connection_context():
        key = ApiKey.issue(shop, scope="read")
        start = datetime.datetime(2026, 11, 27, 10, 0, 0)
        for number in range(105):
            at = start + datetime.timedelta(seconds=number)
            Log.create(id="00000000-0000-7000-8000-%012d" % number, project=shop, level="INFO",
                       message="log %d %s" % (number, HOSTILE), metadata={"n": number, "html": "</td><b>"},
                       timestamp=at, received_at=at)
    add_user("root", all_projects=True)
    sign_in(client, "root")
    page = client.get("/ui/projects/shop")
    assert page.status_code == 200
    answer = client.get("/logs?project=shop")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    assert [log["message"].split()[1] for log in answer.json["logs"]] == [str(n) for n in range(104, 4, -1)]
    assert answer.json["logs"][0]["message"] == "log 104 " + HOSTILE  # as stored: the page shows it as text
    for text in (page.text, client.get("/ui/").text, answer.text):
        assert key not in text and key[:models.SHOWN_PREFIX_LENGTH] not in text


def test_a_session_reads_only_its_projects_and_never_writes(client, shop, bound):
    with models.database.connection_context():
        other = Project.create(name="other")
        Log.create(id="00000000-0000-7000-8000-000000000001", project=other, level="INFO", message="secret",
                   metadata={}, timestamp=datetime.datetime(2026, 11, 27), received_at=datetime.datetime(2026, 11, 27))
    add_user("ada", shop)
    assert client.get("/logs?project=shop").status_code == 401  # not signed in yet
    sign_in(client, "ada")
    assert client.get("/logs?project=shop").status_code == 200
    for url in ("/logs?project=other", "/logs?project=%d" % other.id, "/logs?project=nope",
                "/logs/histogram?project=other", "/logs/live?project=other", "/logs/live?project=other&cursor=0:0",
                "/logs/00000000-0000-7000-8000-000000000001/context?project=other",
                "/logs/00000000-0000-7000-8000-000000000001?project=other"):
        answer = client.get(url)
        assert answer.status_code == 404 and "secret" not in answer.text, url
    assert client.get("/logs/histogram?project=shop&since=1h").status_code == 200
    assert client.get("/logs/live?project=shop").status_code == 200
    assert client.post("/logs?project=shop", json={"message": "x"}).status_code == 401
    assert client.post("/v1/logs?project=shop", json={}).status_code == 401
    client.post("/ui/logout", data={"csrf_token": csrf_of(client.get("/ui/"))})
    assert client.get("/logs?project=shop").status_code == 401


def test_names_are_text_and_a_name_with_a_slash_is_reached_by_id(client, bound):
    with models.database.connection_context():
        hostile = Project.create(name=HOSTILE)
        slashed = Project.create(name="team/api")
        dots = Project.create(name="..")
    add_user("ada\u202e<b>", hostile, slashed, dots)
    sign_in(client, "ada\u202e<b>")
    overview = client.get("/ui/").text
    assert '<span class="who">ada\u202e&lt;b&gt;</span>' in overview
    links = dict((name, href) for href, name in re.findall(r'<li><a href="([^"]+)">([^<]+)</a>', overview))
    assert links == {"..": "/ui/projects/%d" % dots.id,
                     "&lt;img src=x onerror=alert(1)&gt;": "/ui/projects/%3Cimg%20src=x%20onerror=alert(1)%3E",
                     "team/api": "/ui/projects/%d" % slashed.id}
    for href in links.values():
        assert client.get(href).status_code == 200


def test_after_sign_in_the_page_asked_for_opens_and_only_the_viewers_own(client, shop):
    add_user("ada", shop)
    assert client.get("/ui/projects/shop").headers["Location"] == "/ui/login?next=/ui/projects/shop"
    assert sign_in(client, "ada", next_page="/ui/projects/shop").headers["Location"] == "/ui/projects/shop"
    for elsewhere in ("https://evil.example/", "//evil.example/ui/", "/\\evil.example", "/logs",
                      "/ui/\t/x\\y"):
        client.post("/ui/logout", data={"csrf_token": csrf_of(client.get("/ui/"))})
        assert sign_in(client, "ada", next_page=elsewhere).headers["Location"] == "/ui/"


def test_an_idle_session_ends(client, shop):
    add_user("ada", shop)
    sign_in(client, "ada")
    assert client.get("/ui/").status_code == 200
    with models.database.connection_context():
        Session.update(last_used_at=models.utcnow() - datetime.timedelta(seconds=Session.IDLE_SECONDS + 1)).execute()
    assert client.get("/ui/").headers["Location"] == "/ui/login"


def test_wrong_passwords_are_refused_per_user_then_per_address(app, shop):
    # Each try from a browser of its own, as a script guessing passwords would.
    add_user("ada", shop)
    add_user("bob", shop)
    for _ in range(signin.MAX_FAILURES):
        answer = sign_in(app.test_client(), "ada", "wrong password", address="198.51.100.1")
        assert answer.status_code == 401 and "Wrong username or password." in answer.text
    # The 6th try is refused without looking at the password, from any address.
    for address in ("198.51.100.1", "198.51.100.2"):
        answer = sign_in(app.test_client(), "ada", address=address)
        assert answer.status_code == 429 and "Too many wrong passwords. Try again in 5 minutes." in answer.text
        assert 290 <= int(answer.headers["Retry-After"]) <= 300
    # Another name from another address is not held back.
    assert sign_in(app.test_client(), "bob", address="198.51.100.2").status_code == 302
    # Wrong passwords for many names from one address stop that address.
    for number in range(signin.MAX_FAILURES):
        assert sign_in(app.test_client(), "guess%d" % number, "wrong", address="198.51.100.3").status_code == 401
    assert sign_in(app.test_client(), "bob", address="198.51.100.3").status_code == 429
    assert sign_in(app.test_client(), "bob", address="198.51.100.4").status_code == 302


def test_a_right_password_forgives_the_names_earlier_wrong_ones(app, shop):
    add_user("ada", shop)
    for _ in range(signin.MAX_FAILURES - 1):
        sign_in(app.test_client(), "ada", "wrong password", address="198.51.100.%d" % _)
    assert sign_in(app.test_client(), "ada", address="198.51.100.10").status_code == 302
    for _ in range(signin.MAX_FAILURES - 1):
        assert sign_in(app.test_client(), "ada", "wrong password", address="198.51.100.20").status_code == 401


def test_wrong_passwords_counted_by_another_process_hold_here(client, shop, bound):
    add_user("ada", shop)
    # Another web process's strikes, through the same store (Redis, or dev mode's spool.db).
    code = ("import config, models, spool; store = spool.open_spool(config.Settings(data_dir=%r, redis_url=%r));"
            "[store.strike('signin:user:' + models.hash_key('ada'), 300) for _ in range(%d)]"
            % (bound.data_dir, bound.redis_url, signin.MAX_FAILURES))
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert sign_in(client, "ada").status_code == 429


def test_strikes_lapse(bound):
    store = tasks.runtime.spool
    assert store.strikes("x") == (0, 0)
    assert [store.strike("x", 1) for _ in range(3)] == [1, 2, 3]
    count, left = store.strikes("x")
    assert count == 3 and 0 < left <= 1
    wait_for(lambda: store.strikes("x") == (0, 0), timeout=5, message="strikes to lapse")
    assert store.strike("x", 60) == 1
    store.clear_strikes("x")
    assert store.strikes("x") == (0, 0)


def test_dev_mode_generates_one_secret_in_the_data_folder(tmp_path):
    settings = config.Settings(data_dir=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"))
    # Four web workers starting at once all sign with the one secret.
    code = "import config, signin; print(signin.secret_key(config.Settings(data_dir=%r)))" % settings.data_dir
    workers = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
               for _ in range(4)]
    secrets = {worker.communicate(timeout=60)[0].strip() for worker in workers}
    path = tmp_path / "data" / signin.SECRET_FILE
    assert secrets == {path.read_text().strip()} and len(secrets.pop()) >= config.MIN_SECRET_LENGTH
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path / "data")) == [signin.SECRET_FILE]
    # A cookie one web process signed is good for the next.
    first = create_app(settings).test_client()
    token = csrf_of(first.get("/ui/login"))
    second = create_app(settings).test_client()
    second.set_cookie("logflow_session", first.get_cookie("logflow_session", path="/").value, path="/")
    assert csrf_of(second.get("/ui/login")) == token


def test_production_without_a_secret_does_not_start(tmp_path):
    settings = config.Settings(data_dir=str(tmp_path / "data"), database_url="postgresql://127.0.0.1:1/none")
    with pytest.raises(config.InvalidSetting) as refused:
        create_app(settings)
    assert str(refused.value).startswith("LOGFLOW_SECRET_KEY: must be set in production (DATABASE_URL is set)")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "data" / signin.SECRET_FILE).exists()


def test_the_secret_is_never_shown_with_the_settings():
    secret = "s" * 40
    assert secret not in repr(config.load({"LOGFLOW_SECRET_KEY": secret}))
