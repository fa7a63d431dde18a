"""The explore page's Live switch in Debian's chromium, against the Procfile's web and worker processes in dev mode.

Records go in with POST /logs and come out of huey_consumer as in production;
each test has a project of its own, so one test's logs never show in another's.
"""
import itertools
import json
import re

import pytest
from playwright.sync_api import expect

from browser import browser, create_user, manage, page, sign_in  # noqa: F401 (fixtures)
from processes import Service, dev_mode_environment, send

projects = ("live%d" % number for number in itertools.count(1))


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """LogFlow's web process and a consumer in dev mode, with one person who may read every project."""
    folder = tmp_path_factory.mktemp("live")
    env = dev_mode_environment(folder, DATABASE_URL="", PYTHONUNBUFFERED="1")
    service = Service(folder, env, key=None)
    create_user(service, "liv", "--all-projects")
    service.start_web()
    service.start_consumer()
    yield service
    service.close()


@pytest.fixture
def project(viewer):
    """(name, ingest key) of a new project."""
    name = next(projects)
    return name, manage(viewer, "add-project", name).strip()


def post(viewer, key, records):
    status, _, body = send(viewer.base_url, key, json.dumps(records).encode())
    assert status == 202, body


def rows(page):
    return page.get_by_role("list", name="Logs, newest first").get_by_role("listitem")


def open_live(page, name, query=""):
    sign_in(page, "liv")
    page.goto("/ui/projects/%s?%s" % (name, query))
    switch = page.get_by_role("switch", name="Live")
    # Returns once the first poll has answered: the page holds a feed cursor.
    with page.expect_response(lambda response: "/logs/live" in response.url and "cursor=" in response.url):
        if not switch.is_checked():
            switch.check()
    expect(page).to_have_url(re.compile(r"[?&]live=1"))


def test_a_log_sent_after_the_page_opened_appears_without_a_reload(page, viewer, project):
    name, key = project
    post(viewer, key, [{"message": "already there"}])
    expect_count = rows(page)
    open_live(page, name)
    loads = []
    page.on("load", lambda _: loads.append(1))
    post(viewer, key, [{"message": "fresh from the service", "level": "ERROR"}])
    first = expect_count.first
    expect(first).to_contain_text("fresh from the service")
    expect(first).to_contain_text("ERROR")
    # Once, and the page was not reloaded.
    expect(page.get_by_text("fresh from the service")).to_have_count(1)
    assert loads == []


def test_live_applies_the_filters_of_the_list(page, viewer, project):
    name, key = project
    open_live(page, name, "level=ERROR&q=checkout")
    post(viewer, key, [{"message": "checkout ok", "level": "INFO"},
                       {"message": "login failed", "level": "ERROR"}])
    # Sent after the others and written after them: once it shows, the others had their chance.
    post(viewer, key, [{"message": "checkout failed", "level": "ERROR"}])
    expect(rows(page).first).to_contain_text("checkout failed")
    expect(rows(page)).to_have_count(1)
    # A reload shows the same view, still live.
    page.reload()
    expect(page.get_by_role("switch", name="Live")).to_be_checked()
    expect(rows(page)).to_have_count(1)


def test_new_logs_wait_under_a_bar_while_i_read_further_down(page, viewer, project):
    name, key = project
    post(viewer, key, [{"message": "old %03d" % number} for number in range(150)])
    page.set_viewport_size({"width": 1000, "height": 600})
    open_live(page, name)
    expect(rows(page)).to_have_count(100)
    rows(page).nth(60).scroll_into_view_if_needed()
    post(viewer, key, [{"message": "new %d" % number} for number in range(3)])
    bar = page.get_by_role("button", name="3 new")
    expect(bar).to_be_visible()
    expect(page.get_by_text("new 0", exact=True)).to_have_count(0)
    bar.click()
    expect(bar).to_be_hidden()
    expect(rows(page).first).to_contain_text("new 2")
    expect(rows(page).nth(2)).to_contain_text("new 0")
    assert page.evaluate("window.scrollY") == 0


def test_a_flood_keeps_about_a_thousand_rows_in_the_page(page, viewer, project):
    name, key = project
    open_live(page, name)
    for start in range(0, 2400, 400):
        post(viewer, key, [{"message": "flood %04d" % number} for number in range(start, start + 400)])
    expect(rows(page).first).to_contain_text("flood 2399", timeout=60_000)
    expect(rows(page)).to_have_count(1000)
    expect(rows(page).last).to_contain_text("flood 1400")
    # Still answering: the search is one key away.
    page.keyboard.press("/")
    expect(page.get_by_role("searchbox", name="Search")).to_be_focused()


def test_logs_sent_while_the_connection_was_down_appear_once_it_is_back(page, viewer, project):
    name, key = project
    open_live(page, name)
    post(viewer, key, [{"message": "before the drop"}])
    expect(rows(page).first).to_contain_text("before the drop")
    page.context.set_offline(True)
    expect(page.get_by_role("status")).to_contain_text("Live:", timeout=30_000)
    post(viewer, key, [{"message": "during the drop %d" % number} for number in range(5)])
    page.context.set_offline(False)
    expect(rows(page).first).to_contain_text("during the drop 4", timeout=60_000)
    texts = rows(page).all_inner_texts()
    assert sum("during the drop" in text for text in texts) == 5
    assert sum("before the drop" in text for text in texts) == 1
    assert page.dialogs == []


def test_a_late_log_shown_live_is_not_shown_again_by_the_older_pages(page, viewer, project):
    name, key = project
    post(viewer, key, [{"message": "old %03d" % number, "timestamp": "2026-01-01T10:%02d:%02dZ" % divmod(number, 60)}
                       for number in range(150)])
    open_live(page, name)
    expect(rows(page)).to_have_count(100)
    # Timestamped among the logs the next page holds: live shows it on top now, the page later.
    post(viewer, key, [{"message": "late", "timestamp": "2026-01-01T10:00:20.5Z"}])
    expect(rows(page).first).to_contain_text("late")
    page.get_by_role("button", name="Older logs").click()
    expect(rows(page)).to_have_count(151)
    expect(page.get_by_text("late", exact=True)).to_have_count(1)
