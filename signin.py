"""Signing in to the viewer: the cookie secret, sessions, CSRF tokens, and the throttle on wrong passwords.

The browser holds one cookie, Flask's session signed with LOGFLOW_SECRET_KEY:
a CSRF token and, once signed in, a random session token whose hash is a row
of the sessions table. That row is what signs a person in, so deleting it
(sign-out, a new password, a removed user) ends the session at once.
"""
import hmac
import ipaddress
import os
import secrets

from flask import abort, request, session
from flask.sessions import SecureCookieSessionInterface

import config
import models
import tasks

# Wrong passwords allowed per user name and per client address; the next try
# within the window (counted from the first) is refused with 429.
MAX_FAILURES = 5
FAILURE_WINDOW_SECONDS = 300
# Dev mode's generated secret, in the data folder.
SECRET_FILE = "secret_key"


def secret_key(settings):
    """LOGFLOW_SECRET_KEY; in dev mode without it, the one generated into the data folder on first start."""
    if settings.secret_key:
        return settings.secret_key
    if settings.database_url:
        # Every web process must sign with the same secret, so none can make its own.
        raise config.InvalidSetting(
            "LOGFLOW_SECRET_KEY: must be set in production (DATABASE_URL is set), the same for every web"
            " process; make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    path = os.path.join(settings.data_dir, SECRET_FILE)
    if not os.path.exists(path):
        os.makedirs(settings.data_dir, exist_ok=True)
        # Written whole under a name of its own, then linked into place: workers
        # starting together all read the one secret that won the link.
        draft = "%s.%d" % (path, os.getpid())
        with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    with open(path) as handle:
        return handle.read().strip()


def set_up(app, settings):
    """Sign the app's session cookie with the secret; HttpOnly, SameSite=Lax.

    Its path is the whole site: the viewer's pages read logs through the API's
    own routes (GET /logs and the rest), which take a session in place of a
    read key (logflow.reader). No route takes one in place of an ingest key.
    """
    app.secret_key = secret_key(settings)
    app.session_interface = SessionCookies()
    app.config.update(SESSION_COOKIE_NAME="logflow_session", SESSION_COOKIE_PATH="/",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over HTTPS, directly or through a proxy."""

    def get_cookie_secure(self, app):
        return request.is_secure or (forwarded("X-Forwarded-Proto") or "").lower() == "https"


def forwarded(header):
    """What the nearest proxy put last in a forwarded header; None without one, or from a client that is no proxy.

    A proxy is trusted at any address that is not a public one (loopback,
    private, carrier-grade NAT), or on a Unix socket (gunicorn then gives no
    address): a client reaching gunicorn directly from the internet could
    write any X-Forwarded-For and escape the throttle below.
    """
    value = request.headers.get(header, "")
    try:
        public = ipaddress.ip_address(request.remote_addr or "").is_global
    except ValueError:
        public = False
    if not value or public:
        return None
    return value.split(",")[-1].strip() or None


def client_address():
    """The address of the browser: the peer's, or the one the proxy in front says it saw."""
    return forwarded("X-Forwarded-For") or request.remote_addr or "unknown"


def csrf_token():
    """The token every form that changes something carries, kept in this browser's signed cookie."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf():
    """Refuse (400) a form that does not carry this browser's token: another site may have sent it."""
    sent = request.form.get("csrf_token", "").encode()
    expected = session.get("csrf", "").encode()
    if not expected or not hmac.compare_digest(sent, expected):
        abort(400, "This form has expired or did not come from this page. Reload the page and try again.")


def signed_in_user():
    """The user of this browser's session, or None (never signed in, signed out, idle too long, removed)."""
    token = session.get("sid")
    if not token:
        return None
    found = models.Session.find(token)
    if found is None:
        session.pop("sid")
        return None
    return found.user


def start_session(user):
    """Sign this browser in as the user, under a new session and a new CSRF token."""
    models.Session.end_idle()
    token = models.Session.open(user)
    session.clear()
    session.update(sid=token, csrf=secrets.token_urlsafe(32))


def end_session():
    """Sign this browser out: its session row goes, and its cookie is emptied."""
    token = session.get("sid")
    if token:
        models.Session.end(token)
    session.clear()


def strike_names(username):
    """The names the throttle counts a wrong password under: the user name's hash, and the client's address."""
    return ["signin:user:" + models.hash_key(username), "signin:address:" + client_address()]


def seconds_refused(username):
    """Seconds until a sign-in as this name from this client may be tried again; 0 if it may now."""
    waits = [left for count, left in map(tasks.runtime.spool.strikes, strike_names(username))
             if count >= MAX_FAILURES]
    return max(waits, default=0)


def note_failure(username):
    """Count a wrong password against the user name and the client's address, in every web process's store."""
    for name in strike_names(username):
        tasks.runtime.spool.strike(name, FAILURE_WINDOW_SECONDS)


def note_success(username):
    """The user signed in: their name's wrong passwords are forgiven (the address's are not)."""
    tasks.runtime.spool.clear_strikes(strike_names(username)[0])
