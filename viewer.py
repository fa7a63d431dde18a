"""The web viewer under /ui/: sign-in and sign-out, a person's projects, the pages that explore a project's logs,
and its saved searches and alerts (viewer_alerts.py says what their forms mean)."""
import datetime
import logging
import math
import time

import peewee
from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

import alerts
import config
import metrics
import models
import query
import records
import signin
import spool
import tasks
import viewer_alerts

logger = logging.getLogger("logflow")
bp = Blueprint("viewer", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

# On every /ui response. Pages hold no inline script or style, so the policy needs no exception.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
                               " frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@bp.record_once
def set_up(state):
    signin.set_up(state.app, state.app.extensions["logflow"]["settings"])


@bp.after_app_request
def add_security_headers(response):
    if request.path == bp.url_prefix or request.path.startswith(bp.url_prefix + "/"):
        response.headers.update(SECURITY_HEADERS)
        if request.endpoint != "viewer.static":
            # Pages show logs to one person: no cache keeps them, and Back after sign-out shows none.
            response.headers["Cache-Control"] = "no-store"
    return response


@bp.before_request
def identify():
    """Find who is signed in; send everyone else to the sign-in form."""
    if request.endpoint == "viewer.static":
        return None
    models.database.connect(reuse_if_open=True)
    g.user = signin.signed_in_user()
    if g.user is None and request.endpoint != "viewer.login":
        wanted = request.full_path.rstrip("?")
        return redirect(url_for("viewer.login", next=wanted if request.endpoint != "viewer.index" else None))
    return None


@bp.teardown_request
def close_database(error):
    if not models.database.is_closed():
        models.database.close()


@bp.context_processor
def forms():
    """Templates put csrf_token() in every form that changes something."""
    return {"csrf_token": signin.csrf_token}


def page(template, status=200, headers=None, **values):
    """A rendered page with its status."""
    return render_template(template, **values), status, headers or {}


@bp.context_processor
def formats():
    """How pages write times (UTC, which the pages' scripts show in the browser's zone), counts and saved queries."""
    return {"utc": records.format_time, "counted": counted, "query_string": viewer_alerts.query_string}


@bp.errorhandler(HTTPException)
def http_error(error):
    return page("error.html", error.code, title=error.name, message=error.description)


def unavailable(title, message):
    """The 503 page, with the Retry-After the API's 503s carry (LOGFLOW_RETRY_AFTER_SECONDS)."""
    return page("error.html", 503, {"Retry-After": str(settings().retry_after_seconds)}, title=title, message=message)


@bp.errorhandler(peewee.OperationalError)
@bp.errorhandler(peewee.InterfaceError)
def database_error(error):
    if query.timed_out(error):
        return unavailable("Too slow", "The logs took too long to read. Try again later.")
    logger.error("database unavailable for %s: %s", request.path, error)
    return unavailable("Unavailable", "The database is unavailable. Try again shortly.")


@bp.errorhandler(spool.SpoolUnavailable)
def store_error(error):
    logger.error("the spool's store is unavailable for %s: %s", request.path, error)
    return unavailable("Unavailable", "Signing in is unavailable. Try again shortly.")


def next_page():
    """Where to go after signing in: the page that asked for it, if it is one of the viewer's own, else the overview."""
    wanted = request.values.get("next", "")
    # Only a path of this viewer: never another site's address, which would make this an open redirect.
    if wanted.startswith(bp.url_prefix + "/") and "\\" not in wanted and wanted.isprintable():
        return wanted
    return url_for("viewer.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The sign-in form; POST checks the password, slowed down after repeated failures."""
    if request.method == "GET":
        if g.user is not None:
            return redirect(next_page())
        return page("login.html", next=request.args.get("next", ""))
    signin.check_csrf()
    name, password = request.form.get("username", ""), request.form.get("password", "")
    shown = {"username": name, "next": request.form.get("next", "")}
    wait = signin.seconds_refused(name)
    if wait:
        minutes = math.ceil(wait / 60)
        return page("login.html", 429, {"Retry-After": str(math.ceil(wait))}, error=(
            "Too many wrong passwords. Try again in %d minute%s." % (minutes, "" if minutes == 1 else "s")), **shown)
    user = models.User.authenticate(name, password)
    if user is None:
        signin.note_failure(name)
        # %r: the name is the client's text, shown with its control characters escaped.
        logger.warning("failed sign-in as %r from %s", name[:100], signin.client_address())
        return page("login.html", 401, error="Wrong username or password.", **shown)
    signin.note_success(name)
    signin.start_session(user)
    logger.info("%r signed in from %s", user.name, signin.client_address())
    return redirect(next_page())


@bp.post("/logout")
def logout():
    """Sign out: the session ends on the server, not only in this browser."""
    signin.check_csrf()
    signin.end_session()
    return redirect(url_for("viewer.login"))


def reference(project):
    """How the viewer's paths name a project: by name, or by id for a name that cannot be one segment of a path."""
    # A slash would split the path, and browsers resolve "." and ".." away; ids are never names (manage.py).
    return str(project.id) if "/" in project.name or project.name in (".", "..") else project.name


def project_url(project):
    """The project's explore page."""
    return url_for("viewer.project", name=reference(project))


def readable(name):
    """The project this person may read by this name or id; 404 alike for an unknown project and another's."""
    found = models.Project.lookup(name)
    if found is None or not g.user.may_read(found):
        abort(404)
    return found


# The overview counts errors, these levels, over the last RECENT_ERRORS.
ERROR_LEVELS = frozenset(("ERROR", "CRITICAL"))
RECENT_ERRORS = datetime.timedelta(hours=1)
# The overview's chart, in SVG viewBox units: wide and low, stretched to the column it is in.
CHART_WIDTH, CHART_HEIGHT = 480, 48
WRITER_NAMES = {"db": "Database", "file": "Daily files"}


@bp.get("/")
def index():
    """The overview: the person's projects with their last day of logs, and the service's state."""
    settings = current_app.extensions["logflow"]["settings"]
    now = models.utcnow()
    readable = list(g.user.readable_projects())
    with models.using_replica(), query.time_limited(settings.read_timeout_seconds):
        projects = [summary(project, now) for project in readable]
    return page("index.html", projects=projects, levels=records.LEVELS, service=service_state(),
                chart_width=CHART_WIDTH, chart_height=CHART_HEIGHT)


def summary(project, now):
    """One project on the overview: its chart of the last day, its errors of the last hour, its newest log's time."""
    day = query.histogram(project.id, query.LogFilter(), now)
    errors = query.histogram(project.id, query.LogFilter(levels=ERROR_LEVELS, since=now - RECENT_ERRORS), now)
    newest, _ = query.fetch_keys(project.id, query.LogFilter(limit=1))
    newest_at = query.as_python(newest[0])[0] if newest else None
    totals = {level: sum(bucket["counts"][level] for bucket in day["buckets"]) for level in records.LEVELS}
    label = "Logs over the last 24 hours: %s" % counted(day["total"], "log")
    return {"project": project, "url": project_url(project), "total": day["total"], "bars": chart(day),
            "label": label + (" (%s)" % per_level(totals) if day["total"] else ""), "errors": errors["total"],
            "newest": records.format_time(newest_at) if newest_at else None,
            "newest_age": ago((now - newest_at).total_seconds()) if newest_at else None}


def chart(histogram):
    """The stacked bars of a histogram's non-empty buckets, in viewBox units: each a bucket and its rectangles, bottom up."""
    buckets = histogram["buckets"]
    most = max([bucket["total"] for bucket in buckets] + [1])
    width = CHART_WIDTH / len(buckets)
    step = datetime.timedelta(milliseconds=histogram["interval_ms"])
    bars = []
    for index, bucket in enumerate(buckets):
        if not bucket["total"]:
            continue
        top, rects = CHART_HEIGHT, []
        for level in records.LEVELS:
            count = bucket["counts"][level]
            if count:
                # One unit at least: a single error beside thousands of lines stays visible.
                height = max(1.0, count / most * CHART_HEIGHT)
                top -= height
                rects.append({"level": level.lower(), "y": round(top, 2), "height": round(height, 2)})
        end = records.parse_timestamp(bucket["start"]) + step
        bars.append({"x": round(index * width + width * 0.1, 2), "width": round(width * 0.8, 2), "rects": rects,
                     "start": bucket["start"], "end": records.format_time(end),
                     "label": "%s (%s)" % (counted(bucket["total"], "log"), per_level(bucket["counts"]))})
    return bars


def counted(count, noun):
    """1 log, 2,000 records."""
    return "{:,} {}{}".format(count, noun, "" if count == 1 else "s")


def per_level(counts):
    """The levels with logs among {level: count}: 1,200 INFO, 3 ERROR."""
    return ", ".join("{:,} {}".format(count, level) for level, count in counts.items() if count)


def service_state():
    """Each writer's queue and quarantine, the consumers alive (what GET /metrics says), and what needs a look.

    None while the spool does not answer: the projects are shown all the same.
    """
    store, now = tasks.runtime.spool, time.time()
    quarantined = models.Quarantined.count_by_writer()
    try:
        states = {writer: metrics.writer_state(store, writer, now) for writer in config.WRITERS}
        alive = metrics.consumers_alive(metrics.heartbeat_ages(store, now))
    except spool.SpoolUnavailable as error:
        logger.error("the overview shows no service state: %s", error)
        return None
    writers = [{"name": WRITER_NAMES.get(writer, writer), "queued": state.queued,
                "oldest": ago(state.oldest_seconds) if state.oldest_seconds is not None else None,
                "paused": ago(state.paused_seconds) if state.paused_seconds else None,
                "quarantined": quarantined.get(writer, 0)} for writer, state in states.items()]
    return {"writers": writers, "consumers_alive": alive, "problems": problems(writers, alive)}


def problems(writers, alive):
    """Sentences for what in the service's state needs someone's attention."""
    found = []
    if not alive:
        # Each writer queues its own copy of a record.
        waiting = max(writer["queued"] for writer in writers)
        found.append("No consumer is running: %s." % (
            "%s waiting in the queue, not written" % counted(waiting, "record") if waiting
            else "new records will wait in the queue"))
    for writer in writers:
        if writer["paused"]:
            found.append("%s: a write failed; the next try is in %s." % (writer["name"], writer["paused"]))
    quarantined = sum(writer["quarantined"] for writer in writers)
    if quarantined:
        found.append("%s in quarantine: a writer could not store them (manage.py quarantine list)."
                     % counted(quarantined, "record"))
    return found


def ago(seconds):
    """A duration as a person reads it at a glance: 40 s, 12 min, 3 h, 2 days."""
    seconds = max(0, int(seconds))
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = seconds // size
            return "%d %s%s" % (count, unit, "s" if unit == "day" and count > 1 else "")
    return "%d s" % seconds


@bp.get("/projects/<name>")
def project(name):
    """A project's explore page: the page reads GET /logs and its histogram with the filters in its own URL."""
    return explore(readable(name), log_id=None)


@bp.get("/projects/<name>/logs/<log_id>")
def permalink(name, log_id):
    """One log among the logs just before and after it (GET /logs/<id>/context), with the filters in the URL."""
    return explore(readable(name), log_id=log_id, filtered=any(key != "project" for key in request.args))


def explore(found, **values):
    """The explore page of a project, with its saved searches and how many of its alerts are firing."""
    searches = viewer_alerts.searches(found)
    return page("project.html", project=found, reference=reference(found), levels=records.LEVELS,
                searches=searches, firing=sum(1 for _, rule in searches if rule and rule.state == "firing"), **values)


def settings():
    return current_app.extensions["logflow"]["settings"]


def search_of(project, search_id):
    """The project's saved search of this id; 404 for another project's, as for an unknown one."""
    search = viewer_alerts.find_search(project, search_id)
    if search is None:
        abort(404)
    return search


def rule_of(project, rule_id):
    """The project's alert of this id; 404 for another project's, as for an unknown one."""
    rule = viewer_alerts.find_rule(project, rule_id)
    if rule is None:
        abort(404)
    return rule


@bp.post("/projects/<name>/searches")
def save_search(name):
    """Save the explore page's filters (not its time range) as a named search; back to the explore page."""
    found = readable(name)
    signin.check_csrf()
    view = request.form.get("query", "")
    try:
        search = alerts.save_search(found, request.form.get("name", ""), viewer_alerts.search_query(view))
    except alerts.AlertError as error:
        flash("The search was not saved: %s." % error, "error")
    else:
        flash("Saved the search %s: %s." % (search.name, search.query or "all logs"))
    # Back to the view as it was, its time range included.
    return redirect(project_url(found) + viewer_alerts.query_string(view.removeprefix("?")))


@bp.post("/projects/<name>/searches/<int:search_id>/delete")
def delete_search(name, search_id):
    """Delete a saved search, and its alert if it has one."""
    found = readable(name)
    signin.check_csrf()
    search = search_of(found, search_id)
    had_alert = search.rules.exists()
    viewer_alerts.delete_search(search)
    logger.info("%r deleted the saved search %r of project %r", g.user.name, search.name, found.name)
    flash("Deleted the saved search %s%s." % (search.name, " and its alert" if had_alert else ""))
    return redirect(url_for("viewer.alerts_page", name=reference(found)))


@bp.get("/projects/<name>/alerts")
def alerts_page(name):
    """The project's alerts (name, rule, channel, state, last evaluation, last error) and its saved searches."""
    found = readable(name)
    searches = viewer_alerts.searches(found)
    return page("alerts.html", project=found, reference=reference(found), searches=searches,
                rules=[(search, rule) for search, rule in searches if rule], describe=alerts.describe,
                destination=viewer_alerts.destination)


@bp.route("/projects/<name>/alerts/new", methods=["GET", "POST"])
def new_alert(name):
    """The form that adds an alert to a saved search; a webhook's signing secret is shown once, on its answer."""
    found = readable(name)
    candidates = [search for search, rule in viewer_alerts.searches(found) if rule is None]
    if request.method == "GET":
        return page("alert_new.html", project=found, reference=reference(found), candidates=candidates,
                    form={"search": request.args.get("search", ""), "kind": "threshold", "channel": "webhook"})
    signin.check_csrf()
    try:
        search = viewer_alerts.chosen_search(found, request.form.get("search", ""))
        rule, secret = viewer_alerts.add_rule(search, request.form, settings())
    except alerts.AlertError as error:
        return page("alert_new.html", 400, project=found, reference=reference(found), candidates=candidates,
                    form=request.form, error=str(error))
    logger.info("%r added the alert %r to project %r", g.user.name, search.name, found.name)
    if secret is None:
        flash("Added the alert %s." % search.name)
        return redirect(url_for("viewer.alert", name=reference(found), rule_id=rule.id))
    return page("alert_created.html", project=found, reference=reference(found), rule=rule, search=search,
                secret=secret, described=alerts.describe(rule), destination=viewer_alerts.destination(rule))


@bp.get("/projects/<name>/alerts/<int:rule_id>")
def alert(name, rule_id):
    """One alert: its rule, state, last evaluations and notification history."""
    found = readable(name)
    rule = rule_of(found, rule_id)
    evaluations, notifications = alerts.history(rule, limit=20)
    now = models.utcnow()
    return page("alert.html", project=found, reference=reference(found), rule=rule, search=rule.search,
                described=alerts.describe(rule), destination=viewer_alerts.destination(rule),
                evaluations=[(evaluation, viewer_alerts.window_query(rule, evaluation.at))
                             for evaluation in evaluations],
                notifications=[(notification, viewer_alerts.delivery(notification, now))
                               for notification in notifications])


@bp.post("/projects/<name>/alerts/<int:rule_id>/test")
def test_alert(name, rule_id):
    """Record a test notification and queue its sending: the page says how it went once reloaded."""
    found = readable(name)
    signin.check_csrf()
    rule = rule_of(found, rule_id)
    # A consumer sends it: a slow receiver holds up a worker, never this request.
    tasks.send_notification(alerts.record_test(rule, settings()))
    flash("A test notification is queued. Reload this page to see whether it was sent.")
    return redirect(url_for("viewer.alert", name=reference(found), rule_id=rule.id))


@bp.post("/projects/<name>/alerts/<int:rule_id>/remove")
def remove_alert(name, rule_id):
    """Remove an alert and its history; its saved search stays."""
    found = readable(name)
    signin.check_csrf()
    rule = rule_of(found, rule_id)
    viewer_alerts.remove_rule(rule)
    logger.info("%r removed the alert %r of project %r", g.user.name, rule.search.name, found.name)
    flash("Removed the alert %s. Its saved search stays." % rule.search.name)
    return redirect(url_for("viewer.alerts_page", name=reference(found)))
