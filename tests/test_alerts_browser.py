"""Saved searches and alerts as a person uses them: Playwright drives Debian's chromium against LogFlow's gunicorn.

The module's LogFlow runs in dev mode (SQLite) with LOGFLOW_ALLOW_PRIVATE_WEBHOOKS=1,
so that alerts may notify the tests' receivers on 127.0.0.1; a second gunicorn
on the same data, without it, shows the refusal. No consumer runs: this process
does a consumer's work when a test says so (writes the queued logs, evaluates
the rules that are due, runs the queued send_notification tasks), so each step
the page shows is one the test took. Tabs read times in Asia/Kolkata.
Screenshots go to /tmp/alerts-*.png.
"""
import datetime
import hashlib
import hmac
import json
import re
import urllib.parse

import orjson
import pytest
from playwright.sync_api import expect

import alerts
import config
import models
import tasks
from browser import browser, create_user, manage, open_tab  # noqa: F401 (browser is a fixture)
from helpers import drain_all
from processes import Service, dev_mode_environment, post
from receivers import ReceiverHandler, receiver
# olga's cookies, signed in once for the module's tabs (both gunicorns share the sessions).
from test_explore_browser import signed_in  # noqa: F401 (a fixture)

ZONE = datetime.timezone(datetime.timedelta(hours=5, minutes=30), "Asia/Kolkata")
TAB = {"timezone_id": "Asia/Kolkata", "locale": "en-GB", "permissions": ["clipboard-read", "clipboard-write"],
       "viewport": {"width": 1200, "height": 900}}
IMG = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """gunicorn in dev mode, projects shop (olga's) and secret (not hers); .strict_url: a second one refusing 127.0.0.1."""
    folder = tmp_path_factory.mktemp("alerts")
    env = dev_mode_environment(folder, DATABASE_URL="", PYTHONUNBUFFERED="1", LOGFLOW_ALLOW_PRIVATE_WEBHOOKS="1")
    service = Service(folder, env, key=None)
    service.key = manage(service, "add-project", "shop").strip()
    manage(service, "add-project", "secret")
    create_user(service, "olga", "--project", "shop")
    strict = Service(tmp_path_factory.mktemp("strict"),
                     {name: value for name, value in env.items() if name != "LOGFLOW_ALLOW_PRIVATE_WEBHOOKS"}, key=None)
    try:
        service.start_web()
        strict.start_web()
        service.strict_url = strict.base_url
        yield service
    finally:
        strict.close()
        service.close()


@pytest.fixture(scope="module")
def consumer(viewer):
    """This process, bound to the module's data as its consumer would be: the settings it sends with."""
    settings = config.Settings(data_dir=viewer.env["LOGFLOW_DATA_DIR"], log_dir=viewer.env["LOGFLOW_LOG_DIR"],
                               allow_private_webhooks=True, notify_timeout_seconds=2)
    tasks.configure(settings)
    return settings


@pytest.fixture
def page(browser, viewer, signed_in, consumer):
    with open_tab(browser, viewer.base_url, storage_state=signed_in, **TAB) as tab:
        yield tab


@pytest.fixture
def hook():
    with receiver() as server:
        yield server


def send_logs(viewer, logs, metadata=None):
    """POST logs (message, level) stamped a minute ago, then write them as a consumer would."""
    stamp = (models.utcnow() - datetime.timedelta(minutes=1)).isoformat() + "Z"
    status, reply = post(viewer.base_url, viewer.key, json.dumps(
        [{"message": message, "level": level, "timestamp": stamp, "metadata": metadata or {}}
         for message, level in logs]).encode())
    assert (status, reply["accepted"]) == (202, len(logs)), reply
    drain_all()
    tasks.huey.flush()  # the drain tasks the web process queued: done already


def add_alert(name, query, target, threshold=1, window=10):
    """A saved search of shop and a threshold rule on it, as the API and manage.py add them; returns the rule."""
    with models.database.connection_context():
        shop = models.Project.get(models.Project.name == "shop")
        search = alerts.save_search(shop, name, query)
        return alerts.add_rule(search, "threshold", window, "webhook", target, tasks.runtime.settings,
                               threshold=threshold)[0]


def evaluate(rule_id):
    """A consumer's minute for this rule, now: evaluate it, deliver what that decided; returns the outcomes.

    Its minute is brought forward to now rather than evaluated at its due_at, up to a minute ahead:
    a notification dated ahead would not be due for delivery yet.
    """
    now = models.utcnow()
    with models.database.connection_context():
        models.AlertRule.update(due_at=now).where(models.AlertRule.id == rule_id).execute()
        made = alerts.evaluate_due(tasks.runtime.settings, now=now)
        mine = [str(n.id) for n in models.Notification.select().where(
            models.Notification.rule == rule_id, models.Notification.id.in_(made))]
        return [alerts.deliver(notification_id, tasks.runtime.settings) for notification_id in mine]


def run_queued():
    """Run the tasks the web process queued (send_notification), as a consumer would; returns their names."""
    ran = []
    while (task := tasks.huey.dequeue()) is not None:
        tasks.huey.execute(task)
        ran.append(task.name)
    return ran


def rule_url(rule):
    return "/ui/projects/shop/alerts/%d" % rule.id


def flash(page, text):
    """The message a page says after a form, found by its beginning."""
    return page.locator("p.flash").filter(has_text=text)


def table(page, title):
    """The rows of a table of the page, by the heading that names it."""
    return page.get_by_role("table", name=title).locator("tbody tr")


def shown_time(moment):
    """A naive UTC datetime as the pages show it in the tab's zone and locale (en-GB)."""
    return moment.replace(tzinfo=datetime.timezone.utc).astimezone(ZONE).strftime("%d/%m/%Y, %H:%M:%S")


def shot(page, name):
    page.screenshot(path="/tmp/alerts-%s.png" % name, full_page=True)


def test_a_search_saved_from_the_explore_view_gets_an_alert_that_fires(page, viewer, hook):
    page.goto("/ui/projects/shop?q=timeout&level=ERROR&since=1h")
    expect(page.get_by_role("status").filter(has_text="No logs match.")).to_be_visible()
    page.locator("summary", has_text="Save search").click()
    page.get_by_label("Name").fill("API timeouts")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(flash(page, "Saved the search")).to_have_text("Saved the search API timeouts: q=timeout&level=ERROR.")
    # The view stays as it was; the time range is not saved.
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query) == {
        "q": ["timeout"], "level": ["ERROR"], "since": ["1h"]}
    page.locator("summary", has_text="Saved searches").click()
    saved = page.get_by_role("list", name="Saved searches").get_by_role("link")
    expect(saved).to_have_text(["API timeouts"])
    expect(saved).to_have_attribute("href", "/ui/projects/shop?q=timeout&level=ERROR")
    shot(page, "explore-saved")

    page.get_by_role("link", name=re.compile("^Alerts")).click()
    expect(page).to_have_url(viewer.base_url + "/ui/projects/shop/alerts")
    expect(page.get_by_text("No alerts yet.")).to_be_visible()
    row = page.get_by_role("row", name=re.compile("API timeouts"))
    expect(row).to_contain_text("q=timeout&level=ERROR")
    row.get_by_role("link", name="Add alert").click()
    expect(page.get_by_role("heading", name="New alert")).to_be_visible()
    expect(page.get_by_label("Saved search")).to_have_text("API timeouts")
    page.get_by_label("Number of logs").fill("3")
    page.get_by_label("Window (minutes)").fill("10")
    page.get_by_label("Channel").select_option(label="Webhook: a signed JSON POST")
    page.get_by_label("URL, or email address").fill(hook.url)
    page.get_by_role("button", name="Add alert").click()

    # The signing secret, once, with a button that copies it.
    expect(page.get_by_role("heading", name="Added the alert API timeouts")).to_be_visible()
    expect(page.get_by_text("Copy it now: it will not be shown again.")).to_be_visible()
    region = page.get_by_role("region", name="Signing secret")
    secret = region.locator("#secret").inner_text()
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", secret)
    copy = region.get_by_role("button")
    expect(copy).to_have_text("Copy secret")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "secret")
    page.get_by_role("link", name="Open the alert").click()
    with models.database.connection_context():
        rule = models.AlertRule.get(models.AlertRule.secret == secret)
    expect(page).to_have_url(viewer.base_url + rule_url(rule))
    expect(page.locator(".state-line")).to_contain_text("OK")
    expect(page.get_by_text("not yet (rules are evaluated every minute)")).to_be_visible()
    assert secret not in page.content()

    # Five matching logs (and others that do not match) arrive; the rule's minute comes.
    send_logs(viewer, [("timeout talking to db", "ERROR")] * 5 + [("timeout, retried", "INFO"),
                                                                   ("disk full", "ERROR")])
    assert evaluate(rule.id) == ["sent"]
    [(headers, body)] = hook.wait_for(1)
    signed = headers["x-logflow-timestamp"].encode() + b"." + body
    # The secret the page showed is the one that signs.
    assert headers["x-logflow-signature"] == "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert (orjson.loads(body)["state"], orjson.loads(body)["count"]) == ("firing", 5)

    page.reload()
    expect(page.locator(".state-line")).to_contain_text("Firing")
    with models.database.connection_context():
        evaluated = models.AlertRule.get_by_id(rule.id).evaluated_at
    [evaluation] = table(page, "Last evaluations").all()
    expect(evaluation.locator("td")).to_have_text([shown_time(evaluated), "5 logs", "▲ Firing", ""])
    expect(evaluation.locator("time")).to_have_attribute("title", evaluated.strftime("%Y-%m-%d %H:%M:%S UTC"))
    # The count opens the explore page on exactly the logs it counted.
    evaluation.get_by_role("link", name="5 logs").click()
    expect(page.locator("#logs > li")).to_have_count(5)
    window = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert (window["q"], window["level"]) == (["timeout"], ["ERROR"])
    assert window["until"] == [evaluated.isoformat(timespec="microseconds") + "Z"]
    page.go_back()
    [notification] = table(page, "Notifications").all()
    expect(notification.locator("td").nth(1)).to_have_text("firing")
    expect(notification.locator("td").nth(2)).to_have_text("1")
    expect(notification.locator("td").nth(3)).to_contain_text("Sent")
    shot(page, "rule")

    page.goto("/ui/projects/shop/alerts")
    row = page.get_by_role("table", name="Alerts").get_by_role("row", name=re.compile("API timeouts"))
    expect(row.locator("td")).to_have_text([
        "at least 3 logs matching q=timeout&level=ERROR within 10 minutes",
        re.compile(r"webhook\s+http://127\.0\.0\.1:%d/…" % hook.server_port), "▲ Firing",
        re.compile(re.escape(shown_time(evaluated)) + r"\s+5 logs"), "none"], use_inner_text=True)
    shot(page, "list")
    # The explore page says an alert is firing, and leads to it.
    page.goto("/ui/projects/shop")
    expect(page.get_by_role("link", name=re.compile("^Alerts"))).to_have_text("Alerts (1 firing)")
    assert page.dialogs == []


def test_the_test_button_queues_a_notification_that_a_consumer_sends(page, viewer, hook):
    rule = add_alert("checkout errors", "q=checkout", hook.url)
    page.goto(rule_url(rule))
    page.get_by_role("button", name="Send test notification").click()
    expect(flash(page, "A test notification is queued")).to_be_visible()
    expect(page).to_have_url(viewer.base_url + rule_url(rule))
    [notification] = table(page, "Notifications").all()
    expect(notification.locator("td").nth(1)).to_have_text("test")
    expect(notification.locator("td").nth(3)).to_have_text("… Pending")
    # The request did not wait for the receiver: nothing was sent until a consumer ran the task.
    assert hook.received == []
    assert run_queued() == ["send_notification"]
    [(_, body)] = hook.wait_for(1)
    assert (orjson.loads(body)["state"], orjson.loads(body)["alert"]) == ("test", "checkout errors")
    page.reload()
    [notification] = table(page, "Notifications").all()
    expect(notification.locator("td").nth(2)).to_have_text("1")
    expect(notification.locator("td").nth(3)).to_contain_text("✓ Sent")
    expect(page.get_by_text("Last error").locator("xpath=following-sibling::dd[1]")).to_have_text("none")


def test_removing_an_alert_keeps_its_search_and_deleting_a_search_takes_its_alert(page, viewer, hook):
    rule = add_alert("payments down", "q=payment", hook.url)
    page.goto(rule_url(rule))
    page.locator("summary", has_text="Remove…").click()
    expect(page.get_by_text("Remove the alert payments down? Its evaluations and notifications go with it;"
                            " the saved search stays.")).to_be_visible()
    page.get_by_role("button", name="Remove alert").click()
    expect(page).to_have_url(viewer.base_url + "/ui/projects/shop/alerts")
    expect(flash(page, "Removed")).to_have_text("Removed the alert payments down. Its saved search stays.")
    expect(page.get_by_role("link", name="payments down")).to_have_count(1)  # the saved search's, alone
    row = page.get_by_role("row", name=re.compile("payments down"))
    expect(row.get_by_role("link", name="Add alert")).to_be_visible()
    assert page.goto(rule_url(rule)).status == 404

    rule = add_alert("refunds", "q=refund", hook.url)
    page.goto("/ui/projects/shop/alerts")
    row = page.get_by_role("table", name="Saved searches").get_by_role("row", name=re.compile("refunds"))
    row.locator("summary", has_text="Delete…").click()
    expect(row.get_by_text("Delete the saved search refunds? Its alert is removed too, with its history.")
           ).to_be_visible()
    row.get_by_role("button", name="Delete search and alert").click()
    expect(flash(page, "Deleted")).to_have_text("Deleted the saved search refunds and its alert.")
    expect(page.get_by_role("link", name="refunds")).to_have_count(0)
    with models.database.connection_context():
        assert not models.AlertRule.select().where(models.AlertRule.id == rule.id).exists()


def test_a_private_address_is_refused_in_the_form_when_not_allowed(page, viewer, hook):
    with models.database.connection_context():
        search = alerts.save_search(models.Project.get(models.Project.name == "shop"), "nightly backup", "q=backup")
    page.goto(viewer.strict_url + "/ui/projects/shop/alerts/new?search=%d" % search.id)
    page.get_by_role("radio", name="No matching log arrives").check()
    page.get_by_label("Window (minutes)").fill("1500")
    page.get_by_label("URL, or email address").fill(hook.url)
    page.get_by_role("button", name="Add alert").click()
    expect(page.get_by_role("alert")).to_have_text(
        "The alert was not added: 127.0.0.1 resolves to 127.0.0.1, a loopback or link-local address; LogFlow does"
        " not send alerts there unless LOGFLOW_ALLOW_PRIVATE_WEBHOOKS=1.")
    shot(page, "refused")
    # What was typed stays, to be corrected.
    expect(page.get_by_label("URL, or email address")).to_have_value(hook.url)
    expect(page.get_by_label("Window (minutes)")).to_have_value("1500")
    expect(page.get_by_role("radio", name="No matching log arrives")).to_be_checked()
    with models.database.connection_context():
        assert not search.rules.exists()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_of_the_alerts_and_a_rule_in_light_and_dark(browser, viewer, signed_in, consumer, scheme):
    """The pages as the tests above left them (before the hostile names below), at the README pictures' size."""
    with open_tab(browser, viewer.base_url, storage_state=signed_in, color_scheme=scheme,
                  **dict(TAB, viewport={"width": 1280, "height": 900})) as tab:
        tab.goto("/ui/projects/shop/alerts")
        expect(tab.get_by_role("heading", name="Alerts of shop")).to_be_visible()
        tab.screenshot(path="/tmp/alerts-list-%s.png" % scheme)
        tab.get_by_role("table", name="Alerts").get_by_role("link").first.click()
        expect(tab.get_by_role("heading", name="Last evaluations")).to_be_visible()
        tab.screenshot(path="/tmp/alerts-rule-%s.png" % scheme)


class HostileReceiver(ReceiverHandler):
    """Refuses every notification with markup in its answer: the rule's last error."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = ("refused " + IMG).encode()
        self.send_response(400)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def test_names_queries_and_receivers_answers_are_shown_as_text(page, viewer, hook):
    hook.RequestHandlerClass = HostileReceiver
    rule = add_alert(IMG, 'q=</code><script>alert(2)</script>&meta.x="><img src=y>', hook.url, threshold=1)
    send_logs(viewer, [("</code><script>alert(2)</script>", "ERROR")], metadata={"x": '"><img src=y>'})
    assert evaluate(rule.id) == ["failed"]  # a 400 is not retried
    error = "the receiver answered 400 refused %s (attempt 1)" % IMG
    page.goto("/ui/projects/shop/alerts")
    row = page.get_by_role("table", name="Alerts").get_by_role("row", name=re.compile(re.escape(IMG)))
    expect(row.locator("td").last).to_have_text(error)
    page.get_by_role("link", name=IMG).first.click()
    expect(page.get_by_role("heading", name=IMG)).to_be_visible()
    expect(page.locator(".rule-facts code")).to_have_text('q=</code><script>alert(2)</script>&meta.x="><img src=y>')
    expect(table(page, "Notifications").locator("td").nth(4)).to_have_text(error)
    page.goto("/ui/projects/shop")
    page.locator("summary", has_text="Saved searches").click()
    expect(page.get_by_role("list", name="Saved searches").get_by_role("link", name=IMG)).to_be_visible()
    assert page.locator("img").count() == 0 and page.dialogs == []


def test_another_projects_alerts_are_not_found(page, viewer):
    for path in ("/ui/projects/secret/alerts", "/ui/projects/secret/alerts/new"):
        assert page.goto(path).status == 404
        expect(page.get_by_role("heading", name="Not Found")).to_be_visible()
