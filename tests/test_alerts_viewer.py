"""The viewer's saved searches and alert pages through Flask's test client, on SQLite and on PostgreSQL.

What the forms store, what the pages show (and never show: a webhook's secret
after its page, another project's alerts), CSRF on every form that changes
something, and alerts.py's refusals shown in the form. tests/test_alerts_browser.py
drives the same pages in chromium with real receivers.
"""
import html
import re
import time

import pytest

import alerts
import models
import tasks
from models import AlertRule, Notification, Project, SavedSearch
from test_viewer import CSP, HOSTILE, add_user, csrf_of, sign_in

# A documentation address (TEST-NET-3): public in form, so accepted without LOGFLOW_ALLOW_PRIVATE_WEBHOOKS,
# and nothing answers there, so a test notification sent inline would hang the request.
HOOK = "http://203.0.113.5/hooks/T0KEN?key=K3Y"


@pytest.fixture
def ada(client, bound):
    """ada, signed in, reads shop; the project secret is not hers. Returns (shop, secret)."""
    with models.database.connection_context():
        shop, secret = Project.create(name="shop"), Project.create(name="secret")
    add_user("ada", shop)
    sign_in(client, "ada")
    return shop, secret


def token(client, path="/ui/"):
    return csrf_of(client.get(path))


def save(client, name, query, project="shop"):
    """Press "Save search" on the explore page with this view's query string; returns the answer."""
    return client.post("/ui/projects/%s/searches" % project,
                       data={"name": name, "query": query, "csrf_token": token(client)})


def add_alert(client, search_id, project="shop", **fields):
    """Send the new-alert form; returns the answer."""
    form = {"search": str(search_id), "kind": "threshold", "threshold": "3", "window": "10", "channel": "webhook",
            "target": HOOK, "repeat": "", "csrf_token": token(client)}
    form.update(fields)
    return client.post("/ui/projects/%s/alerts/new" % project, data=form)


def stored(model, *where):
    with models.database.connection_context():
        return list(model.select().where(*where)) if where else list(model.select())


def flashes(page):
    """The messages a page says after a form: (role, text)."""
    return [(role, html.unescape(text)) for role, text in
            re.findall(r'<p class="flash[^"]*" role="(\w+)">([^<]*)</p>', page.text)]


def test_save_search_keeps_the_views_filters_not_its_time_range(client, ada):
    view = "q=timeout&level=ERROR&since=1h&live=1&meta.service=api&meta.user%21=bob&cursor=abc"
    answer = save(client, "API timeouts", view)
    # Back to the view as it was, its time range included.
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/ui/projects/shop?" + view.replace("%21", "!").replace("!", "%21")
    [search] = stored(SavedSearch)
    assert (search.name, search.query) == ("API timeouts", "q=timeout&level=ERROR&meta.service=api&meta.user%21=bob")
    page = client.get(answer.headers["Location"])
    assert flashes(page) == [("status", "Saved the search API timeouts: %s." % search.query)]
    menu = re.search(r'<ul class="saved-list" aria-label="Saved searches">(.*?)</ul>', page.text, re.S).group(1)
    assert re.findall(r'<a href="([^"]+)">([^<]+)</a>', menu) == [
        ("/ui/projects/shop?q=timeout&amp;level=ERROR&amp;meta.service=api&amp;meta.user%21=bob", "API timeouts")]
    assert flashes(client.get("/ui/projects/shop")) == []  # said once

    # An empty view saves "all logs"; a blank search box is no filter.
    assert save(client, "everything", "q=&since=15m").status_code == 302
    assert stored(SavedSearch, SavedSearch.name == "everything")[0].query == ""
    listing = client.get("/ui/projects/shop/alerts")
    assert re.findall(r'<th scope="row"><a href="([^"]+)">([^<]+)</a></th>', listing.text) == [
        ("/ui/projects/shop?q=timeout&amp;level=ERROR&amp;meta.service=api&amp;meta.user%21=bob", "API timeouts"),
        ("/ui/projects/shop", "everything")]
    assert listing.text.count("Add alert</a>") == 2


def test_a_search_that_cannot_be_saved_says_why_and_nothing_is_stored(client, ada):
    save(client, "API timeouts", "q=timeout")
    for name, query, reason in (("API timeouts", "q=other", "project shop already has a saved search named API"
                                                             " timeouts"),
                                ("  ", "q=x", "a saved search name cannot be empty or blank"),
                                ("bad level", "level=LOUD", "level: ")):
        answer = save(client, name, query)
        assert answer.status_code == 302
        [(role, text)] = flashes(client.get(answer.headers["Location"]))
        assert role == "alert" and text.startswith("The search was not saved: " + reason), text
    # Without this browser's token: refused, and nothing saved.
    answer = client.post("/ui/projects/shop/searches", data={"name": "forged", "query": "q=x"})
    assert answer.status_code == 400 and "This form has expired" in answer.text
    assert [search.name for search in stored(SavedSearch)] == ["API timeouts"]


def test_an_alert_added_in_the_form_shows_its_webhook_secret_once(client, ada):
    save(client, "API timeouts", "q=timeout&level=ERROR")
    [search] = stored(SavedSearch)
    form = client.get("/ui/projects/shop/alerts/new?search=%d" % search.id)
    assert '<option value="%d" selected>API timeouts</option>' % search.id in form.text
    answer = add_alert(client, search.id, repeat="30")
    assert answer.status_code == 200
    [rule] = stored(AlertRule)
    assert (rule.kind, rule.threshold, rule.window_minutes, rule.channel, rule.target, rule.repeat_minutes) == (
        "threshold", 3, 10, "webhook", HOOK, 30)
    assert rule.secret.startswith("whsec_")
    assert '<code id="secret">%s</code>' % rule.secret in answer.text
    assert "Copy it now: it will not be shown again." in answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    # Never again: not on the alert's page, the list, the explore page, nor the form.
    rule_page = client.get("/ui/projects/shop/alerts/%d" % rule.id)
    for page in (rule_page, client.get("/ui/projects/shop/alerts"), client.get("/ui/projects/shop"),
                 client.get("/ui/projects/shop/alerts/new")):
        assert page.status_code == 200 and rule.secret not in page.text
    # The URL up to its host: its path and query may be its key.
    for page in (rule_page, client.get("/ui/projects/shop/alerts")):
        assert "http://203.0.113.5/…" in page.text and "T0KEN" not in page.text and "K3Y" not in page.text
    assert "at least 3 logs matching q=timeout&amp;level=ERROR within 10 minutes" in rule_page.text
    assert "every 30 minutes while it keeps firing" in rule_page.text

    # An email alert has no secret: its page follows, saying it was added.
    save(client, "nightly backup", "q=backup+done")
    [backup] = stored(SavedSearch, SavedSearch.name == "nightly backup")
    answer = add_alert(client, backup.id, kind="absence", threshold="", window="1500", channel="email",
                       target="ops@example.com")
    [emailed] = stored(AlertRule, AlertRule.search == backup)
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/projects/shop/alerts/%d" % emailed.id
    page = client.get(answer.headers["Location"])
    assert flashes(page) == [("status", "Added the alert nightly backup.")]
    assert "no log matching q=backup+done within 1500 minutes" in page.text and "ops@example.com" in page.text
    assert emailed.secret is None
    # Every search has its alert now: the form says so.
    assert "has an alert already, or there is none yet" in client.get("/ui/projects/shop/alerts/new").text


@pytest.mark.parametrize("fields, reason", [
    ({"target": "http://127.0.0.1:9/hook"},
     "127.0.0.1 resolves to 127.0.0.1, a loopback or link-local address; LogFlow does not send alerts there unless"
     " LOGFLOW_ALLOW_PRIVATE_WEBHOOKS=1"),
    ({"target": "http://169.254.169.254/latest"}, "169.254.169.254 resolves to 169.254.169.254, a loopback"),
    ({"target": "ftp://203.0.113.5/x"}, "'ftp://203.0.113.5/x' is not an http:// or https:// URL"),
    ({"channel": "email", "target": "not an address"}, "'not an address' is not an email address"),
    ({"window": "five"}, "the window must be a whole number of at most 9 digits, not 'five'"),
    ({"window": ""}, "the window is missing"),
    ({"window": "0"}, "the window must be 1 to 10080 minutes"),
    ({"threshold": "0"}, "a threshold must be 1 or more"),
    ({"repeat": "-1"}, "the repeat interval must be a whole number of at most 9 digits, not '-1'"),
    ({"kind": "sometimes"}, "the rule must be a threshold or an absence"),
    ({"channel": "pager"}, "the channel must be one of webhook, slack, email, not 'pager'"),
    ({"search": "999999"}, "choose one of the project's saved searches"),
])
def test_a_rule_that_cannot_be_added_is_refused_in_the_form_with_alerts_reason(client, ada, fields, reason):
    save(client, "API timeouts", "q=timeout")
    [search] = stored(SavedSearch)
    answer = add_alert(client, search.id, **fields)
    assert answer.status_code == 400
    said = html.unescape(re.search(r'<p class="error" role="alert">([^<]*)</p>', answer.text).group(1))
    assert said.startswith("The alert was not added: " + reason), said
    # What was typed stays in the form.
    target = fields.get("target", HOOK)
    assert ('name="target" required autocomplete="off" spellcheck="false" value="%s"' % html.escape(target)
            in answer.text)
    assert stored(AlertRule) == []


def test_the_test_button_records_a_notification_and_queues_it_without_waiting_for_the_receiver(client, ada, bound):
    save(client, "API timeouts", "q=timeout")
    [search] = stored(SavedSearch)
    add_alert(client, search.id)
    [rule] = stored(AlertRule)
    tasks.huey.flush()
    started = time.monotonic()
    answer = client.post("/ui/projects/shop/alerts/%d/test" % rule.id, data={"csrf_token": token(client)})
    # Nothing answers at 203.0.113.5: sent inline, this would wait for the connection to time out.
    assert time.monotonic() - started < 5
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/projects/shop/alerts/%d" % rule.id
    [notification] = stored(Notification)
    assert (notification.event, notification.attempts, notification.sent_at) == ("test", 0, None)
    [queued] = tasks.huey.pending()
    assert (queued.name, queued.args) == ("send_notification", (str(notification.id),))
    page = client.get(answer.headers["Location"])
    assert flashes(page) == [("status", "A test notification is queued. Reload this page to see whether it was sent.")]
    row = re.search(r"<tr>\s*<td><time[^>]*>[^<]*</time></td>\s*<td>test</td>\s*<td>0</td>(.*?)</tr>", page.text, re.S)
    assert "Pending" in row.group(1)
    # Without the page's token: refused, nothing recorded.
    assert client.post("/ui/projects/shop/alerts/%d/test" % rule.id).status_code == 400
    assert len(stored(Notification)) == 1


def test_removing_an_alert_keeps_its_search_and_deleting_a_search_removes_its_alert(client, ada):
    for name in ("API timeouts", "slow checkout"):
        save(client, name, "q=" + name.split()[1])
    timeouts, slow = sorted(stored(SavedSearch), key=lambda search: search.name)
    for search in (timeouts, slow):
        add_alert(client, search.id)
    timeouts_rule, slow_rule = (stored(AlertRule, AlertRule.search == search)[0] for search in (timeouts, slow))
    with models.database.connection_context():
        alerts.record_test(timeouts_rule, tasks.runtime.settings)

    listing = client.get("/ui/projects/shop/alerts").text
    assert ("Delete the saved search API timeouts? <strong>Its alert is removed too</strong>, with its history."
            in listing)
    rule_page = client.get("/ui/projects/shop/alerts/%d" % timeouts_rule.id).text
    assert ("Remove the alert API timeouts? Its evaluations and notifications go with it; the saved search stays."
            in rule_page)
    # Forms without the token change nothing.
    assert client.post("/ui/projects/shop/alerts/%d/remove" % timeouts_rule.id).status_code == 400
    assert client.post("/ui/projects/shop/searches/%d/delete" % slow.id).status_code == 400
    assert len(stored(AlertRule)) == 2

    answer = client.post("/ui/projects/shop/alerts/%d/remove" % timeouts_rule.id, data={"csrf_token": token(client)})
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/projects/shop/alerts"
    assert flashes(client.get("/ui/projects/shop/alerts")) == [
        ("status", "Removed the alert API timeouts. Its saved search stays.")]
    assert [rule.id for rule in stored(AlertRule)] == [slow_rule.id] and stored(Notification) == []
    assert len(stored(SavedSearch)) == 2
    assert client.get("/ui/projects/shop/alerts/%d" % timeouts_rule.id).status_code == 404

    answer = client.post("/ui/projects/shop/searches/%d/delete" % slow.id, data={"csrf_token": token(client)})
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/projects/shop/alerts"
    assert flashes(client.get("/ui/projects/shop/alerts")) == [
        ("status", "Deleted the saved search slow checkout and its alert.")]
    assert stored(AlertRule) == [] and [search.name for search in stored(SavedSearch)] == ["API timeouts"]


def test_another_projects_searches_and_alerts_are_404_and_stay(client, ada):
    shop, secret = ada
    with models.database.connection_context():
        hidden = alerts.save_search(secret, "payroll errors", "q=payroll")
        rule, _ = alerts.add_rule(hidden, "threshold", 5, "webhook", HOOK, tasks.runtime.settings, threshold=1)
    form = token(client)
    gets = ["/ui/projects/secret/alerts", "/ui/projects/secret/alerts/new", "/ui/projects/secret/alerts/%d" % rule.id,
            "/ui/projects/%d/alerts" % secret.id, "/ui/projects/nothing/alerts",
            # This project's address, another project's alert: as unknown.
            "/ui/projects/shop/alerts/%d" % rule.id]
    posts = ["/ui/projects/secret/searches", "/ui/projects/secret/alerts/new",
             "/ui/projects/secret/alerts/%d/test" % rule.id, "/ui/projects/secret/alerts/%d/remove" % rule.id,
             "/ui/projects/secret/searches/%d/delete" % hidden.id,
             "/ui/projects/shop/alerts/%d/test" % rule.id, "/ui/projects/shop/alerts/%d/remove" % rule.id,
             "/ui/projects/shop/searches/%d/delete" % hidden.id]
    unknown = client.get("/ui/projects/nothing/alerts")
    for path in gets:
        answer = client.get(path)
        assert answer.status_code == 404 and answer.data == unknown.data, path
    for path in posts:
        answer = client.post(path, data={"csrf_token": form, "name": "x", "query": "", "search": str(hidden.id),
                                         "kind": "threshold", "threshold": "1", "window": "5", "channel": "webhook",
                                         "target": HOOK})
        assert answer.status_code == 404 and "payroll" not in answer.text, path
    # This project's form cannot add an alert to another project's search either.
    answer = add_alert(client, hidden.id, project="shop")
    assert answer.status_code == 400 and "choose one of the project&#39;s saved searches" in answer.text
    assert [search.name for search in stored(SavedSearch)] == ["payroll errors"]
    assert [row.id for row in stored(AlertRule)] == [rule.id] and stored(Notification) == []
    # Signed out: to the sign-in form, whichever page.
    client.post("/ui/logout", data={"csrf_token": token(client)})
    answer = client.get("/ui/projects/shop/alerts")
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/login?next=/ui/projects/shop/alerts"


def test_names_queries_and_receivers_errors_are_text_on_every_page(client, ada):
    shop, _ = ada
    # As the API may store it: not encoded again, as the viewer would.
    with models.database.connection_context():
        search = alerts.save_search(shop, HOSTILE, 'q=</code><script>alert(2)</script>&meta.x="><img src=y>')
    add_alert(client, search.id)
    [rule] = stored(AlertRule)
    with models.database.connection_context():
        AlertRule.update(last_error="the receiver answered 400 " + HOSTILE, last_count=4, state="firing",
                         evaluated_at=models.utcnow()).execute()
        alerts.record_test(rule, tasks.runtime.settings)
        Notification.update(last_error="the receiver answered 500 </td>" + HOSTILE).execute()
    pages = [client.get(path) for path in ("/ui/projects/shop", "/ui/projects/shop/alerts",
                                           "/ui/projects/shop/alerts/%d" % rule.id,
                                           "/ui/projects/shop/alerts/new?search=%d" % search.id)]
    for page in pages:
        assert page.status_code == 200
        assert "<img" not in page.text and "<script>alert" not in page.text
        assert page.headers["Content-Security-Policy"] == CSP
        # No inline script or style: scripts come from files, and no element carries a style.
        assert re.findall(r"<script[^>]*>", page.text) in ([], ['<script src="/ui/static/alerts.js" defer>'],
                                                           ['<script src="/ui/static/explore.js" defer>'])
        assert " style=" not in page.text and "<style" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1].text
    shown = "q=&lt;/code&gt;&lt;script&gt;alert(2)&lt;/script&gt;&amp;meta.x=&#34;&gt;&lt;img src=y&gt;"
    assert "<code>%s</code>" % shown in pages[1].text and "<code>%s</code>" % shown in pages[2].text
    # Its link opens the explore page with the query encoded again.
    assert ('<a href="/ui/projects/shop?q=%3C%2Fcode%3E%3Cscript%3Ealert%282%29%3C%2Fscript%3E'
            '&amp;meta.x=%22%3E%3Cimg+src%3Dy%3E">' in pages[1].text)
    assert "the receiver answered 400 &lt;img src=x onerror=alert(1)&gt;" in pages[2].text
    assert "the receiver answered 500 &lt;/td&gt;&lt;img src=x onerror=alert(1)&gt;" in pages[2].text
