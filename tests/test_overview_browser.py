"""The overview as a person sees it in chromium, against LogFlow's gunicorn in dev mode (tests/test_viewer_browser.py's fixtures).

No consumer runs beside that gunicorn: records wait in the spool until a test
writes them from this process, as a consumer would (helpers.drain_all).
"""
import contextlib
import datetime
import json
import math
import re
import urllib.request

import pytest
from playwright.sync_api import expect

import config
import models
import records
import tasks
from helpers import drain_all
from browser import open_tab
from test_viewer_browser import HOSTILE, browser, create_user, manage, sign_in, viewer  # noqa: F401 (fixtures)

# Far from UTC, and not by whole hours: a time shown in UTC could not pass for local.
TIME_ZONE = "Asia/Kolkata"
SCREENSHOTS = "/tmp/overview-%s.png"


@pytest.fixture
def tab(browser, viewer):  # noqa: F811 (fixtures)
    """open_tab(width, scheme): a tab of its own in TIME_ZONE, closed after the test."""
    with contextlib.ExitStack() as tabs:
        yield lambda width=1200, scheme="light": tabs.enter_context(open_tab(
            browser, viewer.base_url, timezone_id=TIME_ZONE, color_scheme=scheme,
            viewport={"width": width, "height": 900}))


def send(viewer, key, body):  # noqa: F811 (fixture)
    """POST records to the running LogFlow; returns its JSON answer."""
    request = urllib.request.Request(viewer.base_url + "/logs", data=json.dumps(body).encode(), method="POST",
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def write_queued(viewer):  # noqa: F811 (fixture)
    """Write what the running LogFlow queued, as its consumer would."""
    tasks.configure(config.Settings(data_dir=viewer.env["LOGFLOW_DATA_DIR"], log_dir=viewer.env["LOGFLOW_LOG_DIR"]))
    return drain_all()


def item(page, name):
    """A project's item on the overview."""
    return page.locator(".projects > li").filter(has=page.get_by_role("link", name=name, exact=True))


def test_the_overview_shows_what_was_stored_in_my_time_zone_and_leads_to_explore(tab, viewer):  # noqa: F811
    key = manage(viewer, "create-key", "web").strip()
    now = models.utcnow()
    newest = now - datetime.timedelta(minutes=3)
    sent = ([{"message": "ok", "level": "info", "timestamp": records.format_time(now - datetime.timedelta(hours=6))}] * 4
            + [{"message": "disk", "level": "error", "timestamp": records.format_time(now - datetime.timedelta(minutes=20))},
               {"message": "old", "level": "error", "timestamp": records.format_time(now - datetime.timedelta(hours=2))},
               {"message": "new", "level": "warn", "timestamp": records.format_time(newest)}])
    assert send(viewer, key, sent)["accepted"] == 7
    create_user(viewer, "olga", "--project", "web", "--project", "shop")
    page = tab()
    sign_in(page, "olga")
    expect(page).to_have_url(viewer.base_url + "/ui/")
    # Queued, and no consumer to write them.
    expect(page.get_by_role("list", name="Needs attention")).to_contain_text(
        "No consumer is running: 7 records waiting in the queue, not written.")
    expect(page.get_by_role("row", name=re.compile("^Database"))).to_contain_text("7")
    expect(page.get_by_text("0 consumers alive")).to_be_visible()
    assert write_queued(viewer) == 14  # once for the database, once for the daily files
    page.reload()
    expect(page.get_by_role("row", name=re.compile("^Database"))).to_have_text(re.compile(r"Database\s*0\s*—\s*0"))
    assert page.locator(".projects a").all_inner_texts() == ["shop", "web"]
    web = item(page, "web")
    expect(web.get_by_role("img")).to_have_attribute(
        "aria-label", "Logs over the last 24 hours: 7 logs (4 INFO, 1 WARN, 2 ERROR)")
    expect(web.locator(".errors dd")).to_have_text("1")
    time = web.locator("time")
    expect(time).to_have_attribute("title", records.format_time(newest).replace("T", " ").replace("Z", " UTC"))
    local = newest.replace(tzinfo=datetime.timezone.utc).astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    expect(time).to_contain_text(local.strftime("%H:%M:%S"))
    expect(item(page, "shop").locator(".numbers")).to_contain_text("none yet")
    page.get_by_role("link", name="web", exact=True).click()
    expect(page).to_have_url(viewer.base_url + "/ui/projects/web")
    expect(page.get_by_role("heading", level=1)).to_have_text("web")
    assert page.dialogs == []


def test_a_project_i_may_not_read_is_absent_and_a_hostile_name_is_text(tab, viewer):  # noqa: F811
    create_user(viewer, "pia", "--all-projects")
    create_user(viewer, "quinn", "--project", "shop")
    page = tab()
    sign_in(page, "quinn")
    assert page.locator(".projects a").all_inner_texts() == ["shop"]
    expect(page.get_by_text("secret")).to_have_count(0)
    page = tab()
    sign_in(page, "pia")
    link = page.get_by_role("link", name=HOSTILE)
    expect(link).to_have_text(HOSTILE)
    assert page.locator("main img").count() == 0
    sources = page.locator("script").evaluate_all("scripts => scripts.map(script => script.src)")
    assert sources == [viewer.base_url + "/ui/static/overview.js"]
    page.wait_for_load_state("load")
    assert page.dialogs == []


def test_the_numbers_are_read_again_every_minute(tab, viewer):  # noqa: F811
    create_user(viewer, "rhea", "--project", "shop")
    key = manage(viewer, "create-key", "shop").strip()
    page = tab()
    page.clock.install()
    sign_in(page, "rhea")
    shop = item(page, "shop")
    expect(shop.locator(".numbers")).to_contain_text("none yet")
    send(viewer, key, [{"message": "hello", "level": "critical"}])
    write_queued(viewer)
    page.clock.run_for(59_000)
    expect(shop.locator(".errors dd")).to_have_text("0")
    with page.expect_navigation():
        page.clock.run_for(2_000)
    expect(shop.locator(".errors dd")).to_have_text("1")
    expect(shop.get_by_role("img")).to_have_attribute("aria-label", "Logs over the last 24 hours: 1 log (1 CRITICAL)")


@pytest.fixture(scope="module")
def busy(viewer):  # noqa: F811 (fixture)
    """A project "checkout" with a day of logs of every level, rising and falling as traffic does."""
    manage(viewer, "add-project", "checkout")
    key = manage(viewer, "create-key", "checkout").strip()
    now = models.utcnow()
    levels = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
    sent = []
    for minute in range(0, 24 * 60, 3):
        busy_hour = 2 + round(3 * abs(math.sin(minute / 230)))
        for number in range(busy_hour):
            level = "CRITICAL" if minute % 397 == 0 and number == 0 else levels[(minute + number * 7) % len(levels)]
            sent.append({"message": "request %d" % number, "level": level,
                         "timestamp": records.format_time(now - datetime.timedelta(minutes=minute, seconds=number))})
    for start in range(0, len(sent), 1000):
        send(viewer, key, sent[start:start + 1000])
    write_queued(viewer)
    return len(sent)


@pytest.mark.parametrize("width", [1200, 360])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_and_nothing_wider_than_the_screen(tab, viewer, busy, width, scheme):  # noqa: F811
    create_user(viewer, "shot-%d-%s" % (width, scheme), "--all-projects")
    page = tab(width, scheme)
    sign_in(page, "shot-%d-%s" % (width, scheme))
    expect(page.get_by_role("heading", name="Service")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=SCREENSHOTS % ("%s-%d" % (scheme, width)), full_page=True)
