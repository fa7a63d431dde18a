"""The explore page as a person uses it: Playwright drives Debian's chromium against LogFlow's gunicorn.

The module's LogFlow runs in dev mode (SQLite) with a consumer; its logs go in
through POST /logs with the projects' own ingest keys, dated over the last three
days, and the tests wait until they are stored. Every tab signs in as one person,
reads times in Asia/Kolkata (UTC+05:30, no daylight saving) and may use the
clipboard. What the list shows is compared with what the seeded logs say it
should show; screenshots go to /tmp/explore-*.png.
"""
import datetime
import json
import re
import subprocess
import urllib.parse
import uuid

import pytest
from playwright.sync_api import expect

import config
import models
from browser import browser, create_user, manage, open_tab, sign_in  # noqa: F401 (browser is a fixture)
from helpers import wait_for
from processes import Service, dev_mode_environment, make_service, post, unique_database_name

ZONE = datetime.timezone(datetime.timedelta(hours=5, minutes=30), "Asia/Kolkata")
TAB = {"timezone_id": "Asia/Kolkata", "locale": "en-GB", "permissions": ["clipboard-read", "clipboard-write"]}
# The seeded logs, dated back from NOW: all three set by the `seeded` fixture as the module's first test starts,
# not when pytest collected the module (minutes earlier in a full run).
NOW = None
SHOP, HOSTILE = [], []
USERS = ("ada", "bob", "carol", "dave")
IMG = "<img src=x onerror=alert(1)>"
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE


def seen_as(text):
    """What the page shows of a text: a bidi control as its code, so that it cannot disguise the rest."""
    return text.replace(RLO, "\u27e6U+202E\u27e7")
BIG = 64 * 1024
NARROW = {"width": 360, "height": 740}


def shop_log(number):
    """Log `number` of the shop project: one every 30 minutes back from NOW - 15 min, over about three days.

    Each preset's edge falls 15 minutes from the nearest log, so a test may start minutes after NOW.
    """
    level = ("CRITICAL" if number == 9 else "ERROR" if number % 7 == 3 else "WARN" if number % 5 == 1
             else "DEBUG" if number % 11 == 4 else "INFO")
    message = {"CRITICAL": "disk full on db-1 (order %d)", "ERROR": "payment declined for order %d",
               "WARN": "slow checkout for order %d", "DEBUG": "cache miss for order %d",
               "INFO": "order %d placed"}[level] % number
    if number % 10 == 0:
        message += "\n  at checkout.py:%d" % number
    metadata = {"user": {"name": USERS[number % 4], "id": number % 4}, "region": "us" if number % 3 == 0 else "eu",
                "order": number}
    if number % 10 == 5:
        metadata.update(retried=True, coupon=None)
    return {"id": str(uuid.uuid4()), "timestamp": NOW - datetime.timedelta(minutes=15 + 30 * number),
            "level": level, "message": message, "metadata": metadata}


def hostile_logs():
    """Logs of the evil project, a minute apart: markup, a right-to-left override, 64 KiB, long unbroken strings."""
    logs = [
        {"message": IMG, "level": "ERROR",
         "metadata": {IMG: "javascript:alert(2)", "url": "javascript:alert(document.cookie)"}},
        {"message": "</script><script>alert(3)</script>", "level": "WARN",
         "metadata": {"</script>": "</script><img src=x onerror=alert(4)>"}},
        {"message": "invoice " + RLO + "fdp.exe is safe", "level": "INFO",
         "metadata": {RLO + "key": RLO + "value", "after": "plain"}},
        {"message": "big:" + "y" * (BIG - 4), "level": "INFO", "metadata": {}},
        {"message": "unbroken " + "W" * 3000, "level": "DEBUG", "metadata": {"token": "Q" * 3000, "K" * 400: "v"}},
    ]
    for minutes, log in enumerate(logs, 1):
        log.update(id=str(uuid.uuid4()), timestamp=NOW - datetime.timedelta(minutes=minutes))
    return logs


@pytest.fixture(scope="module")
def seeded():
    """Date the logs to seed back from now."""
    global NOW
    NOW = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, second=0, microsecond=0)
    SHOP[:] = [shop_log(number) for number in range(150)]
    HOSTILE[:] = hostile_logs()


def wire(log):
    """A seeded log as POST /logs takes it."""
    return dict(log, timestamp=log["timestamp"].isoformat() + "Z")


def iso(moment):
    """A naive UTC datetime as the page writes it in since and until (Date.toISOString)."""
    return moment.isoformat(timespec="milliseconds") + "Z"


def parse_iso(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def first_lines(logs, keep=lambda log: True, limit=100):
    """What the list shows of the logs kept: each message's first line, newest first, one page."""
    kept = sorted((log for log in logs if keep(log)), key=lambda log: log["timestamp"], reverse=True)
    return [log["message"].split("\n", 1)[0] for log in kept][:limit]


def between(since, until):
    return lambda log: since <= log["timestamp"] < until


@pytest.fixture(scope="module")
def viewer(tmp_path_factory, seeded):
    """LogFlow in dev mode (web and consumer) with projects shop and evil, their logs stored, and a user olga."""
    folder = tmp_path_factory.mktemp("explore")
    env = dev_mode_environment(folder, DATABASE_URL="", PYTHONUNBUFFERED="1")
    service = Service(folder, env, key=None)
    keys = {name: manage(service, "add-project", name).strip() for name in ("shop", "evil")}
    service.read_key = manage(service, "create-key", "--scope", "read", "shop").strip()
    create_user(service, "olga", "--project", "shop", "--project", "evil")
    service.start_web()
    try:
        consumer = service.start_consumer()
        for name, logs in (("shop", SHOP), ("evil", HOSTILE)):
            status, reply = post(service.base_url, keys[name], json.dumps([wire(log) for log in logs]).encode())
            assert (status, reply["accepted"], reply.get("warnings")) == (202, len(logs), None), reply
        models.bind_database(config.Settings(data_dir=env["LOGFLOW_DATA_DIR"]))
        sent = {log["id"] for log in SHOP + HOSTILE}

        def stored():
            consumer.check_alive()
            with models.database.connection_context():
                return {str(log.id) for log in models.Log.select(models.Log.id)} == sent
        wait_for(stored, timeout=60, interval=0.2, message="the consumer to store the seeded logs")
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def signed_in(browser, viewer):
    """olga's cookies, signed in once for the module's tabs."""
    with open_tab(browser, viewer.base_url) as tab:
        assert sign_in(tab, "olga").status == 302
        return tab.context.storage_state()


@pytest.fixture
def page(browser, viewer, signed_in):
    with open_tab(browser, viewer.base_url, storage_state=signed_in, **TAB) as tab:
        yield tab


def rows(page):
    """The list's rows (each a log), top to bottom."""
    return page.get_by_role("list", name="Logs, newest first").locator(":scope > li")


def expect_messages(page, messages):
    """The list shows these first lines of messages, top to bottom, and nothing else."""
    expect(rows(page).locator(".summary .message")).to_have_text(messages, timeout=15_000)


def parameters(page):
    """The page's query parameters: {name: [values]}."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)


def apply(page):
    page.get_by_role("button", name="Apply").click()


def shot(page, name, **options):
    page.screenshot(path="/tmp/explore-%s.png" % name, **options)


def local_input(moment):
    """A naive UTC datetime as a datetime-local field in the tab's time zone holds it."""
    return moment.replace(tzinfo=datetime.timezone.utc).astimezone(ZONE).strftime("%Y-%m-%dT%H:%M:%S")


def test_search_levels_and_time_range_are_the_url_and_reload_and_back_show_them_again(page, viewer):
    page.goto("/ui/projects/shop")
    expect_messages(page, first_lines(SHOP))
    # Times in the browser's zone, UTC on hover.
    newest = rows(page).first.locator("time")
    local = SHOP[0]["timestamp"].replace(tzinfo=datetime.timezone.utc).astimezone(ZONE)
    expect(newest).to_contain_text(local.strftime("%H:%M:%S.000"))
    expect(newest).to_have_attribute("title", SHOP[0]["timestamp"].isoformat(" ", "microseconds") + " UTC")

    # Search reads messages, not metadata: a user's name alone finds nothing.
    page.get_by_label("Search").fill("carol")
    apply(page)
    expect(page.get_by_role("status")).to_have_text("No logs match.")
    expect(rows(page)).to_have_count(0)

    page.get_by_label("Search").fill("declined")
    apply(page)
    expect_messages(page, first_lines(SHOP, lambda log: "declined" in log["message"]))
    assert parameters(page) == {"q": ["declined"]}

    page.get_by_label("Search").fill("")
    for level in ("DEBUG", "INFO", "CRITICAL"):
        page.get_by_role("checkbox", name=level).uncheck()
    apply(page)
    warnings_and_errors = first_lines(SHOP, lambda log: log["level"] in ("WARN", "ERROR"))
    expect_messages(page, warnings_and_errors)
    assert parameters(page) == {"level": ["WARN,ERROR"]}

    page.get_by_label("Time range").select_option(label="Last 6 hours")
    apply(page)
    recent = first_lines(SHOP, lambda log: log["level"] in ("WARN", "ERROR")
                         and log["timestamp"] >= NOW - datetime.timedelta(hours=6))
    assert len(recent) == 5
    expect_messages(page, recent)
    assert parameters(page) == {"level": ["WARN,ERROR"], "since": ["6h"]}
    shot(page, "filters")

    url = page.url
    page.reload()
    expect_messages(page, recent)
    assert page.url == url
    expect(page.get_by_label("Time range")).to_have_value("6h")
    expect(page.get_by_role("checkbox", name="WARN")).to_be_checked()
    expect(page.get_by_role("checkbox", name="INFO")).not_to_be_checked()

    page.go_back()
    expect_messages(page, warnings_and_errors)
    assert parameters(page) == {"level": ["WARN,ERROR"]}
    expect(page.get_by_label("Time range")).to_have_value("")
    page.go_back()
    expect_messages(page, first_lines(SHOP, lambda log: "declined" in log["message"]))
    expect(page.get_by_label("Search")).to_have_value("declined")
    expect(page.get_by_role("checkbox", name="INFO")).to_be_checked()
    page.go_forward()
    page.go_forward()
    expect_messages(page, recent)

    # Between two moments typed in the browser's own time zone: since is inclusive, until is not.
    page.get_by_label("Time range").select_option(label="Between…")
    page.get_by_label("From", exact=True).fill(local_input(SHOP[20]["timestamp"]))
    page.get_by_label("To", exact=True).fill(local_input(SHOP[10]["timestamp"]))
    apply(page)
    window = first_lines(SHOP, lambda log: log["level"] in ("WARN", "ERROR")
                         and SHOP[20]["timestamp"] <= log["timestamp"] < SHOP[10]["timestamp"])
    expect_messages(page, window)
    assert parameters(page) == {"level": ["WARN,ERROR"], "since": [iso(SHOP[20]["timestamp"])],
                                "until": [iso(SHOP[10]["timestamp"])]}
    page.reload()
    expect_messages(page, window)
    # Chromium leaves out zero seconds of a datetime-local value.
    expect(page.get_by_label("From", exact=True)).to_have_value(local_input(SHOP[20]["timestamp"])[:16])
    expect(page.get_by_label("To", exact=True)).to_have_value(local_input(SHOP[10]["timestamp"])[:16])
    assert page.dialogs == []


def test_an_expanded_log_shows_its_metadata_and_ids_copies_them_and_filters_by_a_value(page, viewer):
    page.goto("/ui/projects/shop")
    expect_messages(page, first_lines(SHOP))
    log = SHOP[0]
    row = rows(page).first
    row.get_by_role("button", expanded=False).click()
    expect(row.get_by_role("button", expanded=True)).to_be_visible()
    expect(row.locator(".full-message")).to_have_text(log["message"])  # the whole message, second line too
    facts = row.locator(".facts")
    expect(facts.locator("dt")).to_have_text(["Id", "Time", "Received", "Link"])
    expect(facts.locator("dd").first).to_contain_text(log["id"])
    expect(facts.locator("dd").nth(1).locator("time")).to_have_text(
        SHOP[0]["timestamp"].replace(tzinfo=datetime.timezone.utc).astimezone(ZONE).strftime("%d/%m/%Y, %H:%M:%S.000"))
    tree = row.locator(".metadata-tree")
    expect(tree.get_by_role("heading", name="Metadata")).to_be_visible()
    expect(tree.locator(".key")).to_have_text(["user", "name", "id", "region", "order"])
    expect(tree.locator("summary")).to_have_text("user { } 2 keys")
    tree.locator("summary").click()  # objects fold
    expect(tree.get_by_text("ada", exact=True)).to_be_hidden()
    tree.locator("summary").click()
    expect(tree.get_by_text("ada", exact=True)).to_be_visible()
    shot(page, "expanded")

    def copied(name):
        button = row.get_by_role("button", name=name)
        button.click()
        expect(button).to_have_text("Copied")
        return page.evaluate("navigator.clipboard.readText()")
    assert copied("Copy id") == log["id"]
    assert copied("Copy time") == log["timestamp"].isoformat(timespec="microseconds") + "Z"
    received = parse_iso(copied("Copy received"))
    assert log["timestamp"] < received < datetime.datetime.utcnow()
    expect(facts.locator("dd").nth(2).locator("time")).to_have_attribute(
        "title", received.isoformat(" ", "microseconds") + " UTC")
    assert json.loads(copied("Copy metadata as JSON")) == log["metadata"]

    # GET /logs filters on strings and numbers only: true and null offer no filter that would match nothing.
    row = rows(page).nth(5)
    row.get_by_role("button", expanded=False).click()
    for value in ("retried = true", "coupon = null"):
        for verb in ("Filter for", "Filter out"):
            expect(row.get_by_role("button", name="%s %s" % (verb, value))).to_be_disabled()
    expect(row.get_by_role("button", name="Filter for order = 5")).to_be_enabled()
    row = rows(page).first

    row.get_by_role("button", name="Filter for user.name = ada").click()
    ada = first_lines(SHOP, lambda log: log["metadata"]["user"]["name"] == "ada")
    expect_messages(page, ada)
    assert parameters(page) == {"meta.user.name": ["ada"]}
    chips = page.get_by_role("list", name="Metadata filters").get_by_role("listitem")
    expect(chips).to_have_text(["user.name = ada×"])
    # The same value once more (from another of ada's logs) is the same filter, not a second chip.
    row = rows(page).nth(1)
    row.get_by_role("button", expanded=False).click()
    row.get_by_role("button", name="Filter for user.name = ada").click()
    expect(chips).to_have_text(["user.name = ada×"])
    assert parameters(page) == {"meta.user.name": ["ada"]}

    row = rows(page).first
    row.get_by_role("button", expanded=False).click()
    row.get_by_role("button", name="Filter out region = us").click()
    expect_messages(page, first_lines(SHOP, lambda log: log["metadata"]["user"]["name"] == "ada"
                                      and log["metadata"]["region"] != "us"))
    assert parameters(page) == {"meta.user.name": ["ada"], "meta.region!": ["us"]}
    expect(chips).to_have_text(["user.name = ada×", "region ≠ us×"])
    shot(page, "chips")
    page.reload()
    expect(chips).to_have_text(["user.name = ada×", "region ≠ us×"])
    expect_messages(page, first_lines(SHOP, lambda log: log["metadata"]["user"]["name"] == "ada"
                                      and log["metadata"]["region"] != "us"))

    page.get_by_role("button", name="Remove filter user.name = ada").click()
    expect_messages(page, first_lines(SHOP, lambda log: log["metadata"]["region"] != "us"))
    assert parameters(page) == {"meta.region!": ["us"]}
    expect(chips).to_have_text(["region ≠ us×"])
    page.get_by_role("button", name="Remove filter region ≠ us").click()
    expect_messages(page, first_lines(SHOP))
    expect(page.get_by_role("list", name="Metadata filters")).to_be_hidden()
    assert parameters(page) == {}
    assert page.dialogs == []


def bucket_start(label):
    """A bar's start, read back from its label ("dd/mm/yyyy, HH:MM:SS.fff to …: N logs") in the tab's zone."""
    local = datetime.datetime.strptime(label.split(" to ")[0], "%d/%m/%Y, %H:%M:%S.%f").replace(tzinfo=ZONE)
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def bar_count(label):
    return int(re.search(r": ([0-9]+) logs?$", label).group(1))


def test_a_histogram_bar_click_and_a_drag_narrow_the_range_and_the_list(page, viewer):
    page.goto("/ui/projects/shop?since=7d")
    expect_messages(page, first_lines(SHOP))
    histogram = page.get_by_role("region", name="Logs over time")
    bars = histogram.get_by_role("button")
    expect(histogram.locator(".note")).to_contain_text("%d logs from" % len(SHOP))
    assert 60 <= bars.count() <= 120
    labels = bars.evaluate_all("bars => bars.map(bar => bar.getAttribute('aria-label'))")
    assert sum(bar_count(label) for label in labels) == len(SHOP)
    expect(histogram.locator(".note")).to_contain_text("2 hours a bar")
    interval = datetime.timedelta(hours=2)
    shot(page, "histogram")
    filled = histogram.get_by_role("button", name=re.compile(r": [1-9][0-9]* logs?$"))

    bar = filled.nth(10)
    label = bar.get_attribute("aria-label")
    start = bucket_start(label)
    bar.click()
    inside = first_lines(SHOP, between(start, start + interval))
    assert len(inside) == bar_count(label) > 0
    expect_messages(page, inside)
    assert parameters(page) == {"since": [iso(start)], "until": [iso(start + interval)]}
    expect(page.get_by_label("Time range")).to_have_value("custom")
    expect(histogram.locator(".note")).to_contain_text("%d logs from" % len(inside))

    page.go_back()
    expect(histogram.locator(".note")).to_contain_text("%d logs from" % len(SHOP))
    first, last = filled.nth(20), filled.nth(23)
    start = bucket_start(first.get_attribute("aria-label"))
    end = bucket_start(last.get_attribute("aria-label")) + interval
    counts = [bar_count(filled.nth(index).get_attribute("aria-label")) for index in range(20, 24)]
    box, other = first.bounding_box(), last.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(other["x"] + other["width"] / 2, other["y"] + other["height"] / 2, steps=8)
    page.mouse.up()
    inside = first_lines(SHOP, between(start, end))
    assert len(inside) == sum(counts)
    expect_messages(page, inside)
    assert parameters(page) == {"since": [iso(start)], "until": [iso(end)]}
    shot(page, "histogram-dragged")
    assert page.dialogs == []


def test_the_histogram_is_one_tab_stop_whose_bars_arrow_keys_walk(page, viewer):
    page.goto("/ui/projects/shop?since=7d")
    histogram = page.get_by_role("region", name="Logs over time")
    bars = histogram.get_by_role("button")
    expect(histogram.locator(".note")).to_contain_text("%d logs from" % len(SHOP))
    page.get_by_role("button", name="Copy as curl").focus()
    page.keyboard.press("Tab")  # past the Live switch
    page.keyboard.press("Tab")
    newest = bars.last
    expect(newest).to_be_focused()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(bars.nth(bars.count() - 3)).to_be_focused()
    # Shift+Tab leaves the chart at once: its bars are not a hundred stops on the way.
    page.keyboard.press("Tab")
    expect(bars.nth(bars.count() - 3)).not_to_be_focused()
    page.keyboard.press("Shift+Tab")
    chosen = bars.nth(bars.count() - 3)
    expect(chosen).to_be_focused()
    start = bucket_start(chosen.get_attribute("aria-label"))
    page.keyboard.press("Enter")
    interval = datetime.timedelta(hours=2)
    expect(page).to_have_url(re.compile(r"until="))
    assert parameters(page) == {"since": [iso(start)], "until": [iso(start + interval)]}


def test_scrolling_loads_older_logs_by_cursor_without_duplicates(page, viewer):
    page.goto("/ui/projects/shop")
    expect_messages(page, first_lines(SHOP))
    expect(page.get_by_role("button", name="Older logs")).to_be_visible()
    with page.expect_request(lambda request: "cursor=" in request.url) as more:
        page.mouse.wheel(0, 100_000)
    assert urllib.parse.urlsplit(more.value.url).path == "/logs"
    expect_messages(page, first_lines(SHOP, limit=None))
    ids = rows(page).evaluate_all("rows => rows.map(row => row.dataset.id)")
    assert len(ids) == len(set(ids)) == len(SHOP)
    expect(page.get_by_role("button", name="Older logs")).to_be_hidden()
    expect(page.get_by_role("status")).to_be_hidden()


def test_a_list_of_exactly_one_page_offers_no_older_logs(page, viewer):
    page.goto("/ui/projects/shop?meta.region=eu")
    eu = first_lines(SHOP, lambda log: log["metadata"]["region"] == "eu", limit=None)
    assert len(eu) == 100  # the API's page
    expect_messages(page, eu)
    expect(page.get_by_role("status")).to_be_hidden()
    expect(page.get_by_role("button", name="Older logs")).to_be_hidden()


def test_a_permalink_shows_its_log_marked_among_the_logs_around_it_with_the_filters_kept(page, viewer):
    focus = SHOP[50]
    page.goto("/ui/projects/shop/logs/%s" % focus["id"])
    expect(page.get_by_text("One log among those just before and after it.")).to_be_visible()
    expect_messages(page, first_lines(SHOP[30:71]))
    current = page.locator("[aria-current=true]")
    expect(current).to_have_count(1)
    expect(current.locator(".full-message")).to_have_text(focus["message"])
    expect(current.get_by_role("button", expanded=True)).to_be_visible()
    expect(current.locator(".facts dd").first).to_contain_text(focus["id"])
    assert rows(page).evaluate_all("rows => rows.findIndex(row => row.ariaCurrent === 'true')") == 20
    # In view with the logs on both sides of it.
    for index in (19, 20, 21):
        expect(rows(page).nth(index)).to_be_in_viewport(ratio=1)
    shot(page, "permalink")

    # From a filtered list, the log's permalink keeps the filters: its neighbours are errors too.
    page.goto("/ui/projects/shop?level=ERROR")
    errors = [log for log in SHOP if log["level"] == "ERROR"]
    expect_messages(page, first_lines(errors))
    focus = errors[5]
    row = rows(page).nth(5)
    row.get_by_role("button", expanded=False).click()
    row.get_by_role("link", name="Permalink").click()
    expect(page).to_have_url("%s/ui/projects/shop/logs/%s?level=ERROR" % (viewer.base_url, focus["id"]))
    expect(page.get_by_text("One log among those just before and after it, filtered as you had them.")).to_be_visible()
    expect_messages(page, first_lines(errors))
    expect(page.locator("[aria-current=true] .summary .message")).to_have_text(focus["message"])
    expect(page.get_by_role("checkbox", name="ERROR")).to_be_checked()
    expect(page.get_by_role("checkbox", name="INFO")).not_to_be_checked()
    page.get_by_role("link", name="shop").click()
    expect(page).to_have_url(viewer.base_url + "/ui/projects/shop")
    assert page.dialogs == []


def test_the_keyboard_searches_moves_expands_and_closes(page, viewer):
    page.goto("/ui/projects/shop")
    expect_messages(page, first_lines(SHOP))
    page.keyboard.press("/")
    search = page.get_by_label("Search")
    expect(search).to_be_focused()
    page.keyboard.type("placed j k")  # letters typed into the search are not shortcuts
    expect(search).to_have_value("placed j k")
    search.fill("placed")
    page.keyboard.press("Enter")
    placed = first_lines(SHOP, lambda log: "placed" in log["message"])
    expect_messages(page, placed)
    assert parameters(page) == {"q": ["placed"]}
    page.keyboard.press("Escape")
    expect(search).not_to_be_focused()
    expect(search).to_have_value("placed")

    selected = page.locator("#logs > li.selected .summary .message")
    page.keyboard.press("j")
    expect(selected).to_have_text(placed[0])
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(selected).to_have_text(placed[2])
    page.keyboard.press("k")
    expect(selected).to_have_text(placed[1])
    expect(rows(page).nth(1).locator(".summary")).to_be_focused()
    page.keyboard.press("Enter")
    expect(rows(page).nth(1).get_by_role("button", expanded=True)).to_be_visible()
    expect(rows(page).nth(1).locator(".detail")).to_be_visible()
    shot(page, "keyboard")
    page.keyboard.press("Escape")
    expect(rows(page).nth(1).get_by_role("button", expanded=False)).to_be_visible()
    expect(rows(page).nth(1).locator(".detail")).to_be_hidden()
    page.keyboard.press("k")
    expect(selected).to_have_text(placed[0])


def test_copy_as_curl_reads_the_same_logs_from_the_api_with_a_read_key(page, viewer):
    page.goto("/ui/projects/shop?q=order&level=INFO,ERROR&since=7d&meta.region=eu")
    wanted = first_lines(SHOP, lambda log: log["level"] in ("INFO", "ERROR") and log["metadata"]["region"] == "eu")
    expect_messages(page, wanted)
    button = page.get_by_role("button", name="Copy as curl")
    button.click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    command = page.evaluate("navigator.clipboard.readText()")
    expect(button).to_be_visible()  # it takes its name back
    prefix = "curl -H \"X-API-Key: $LOGFLOW_READ_KEY\" '"
    assert command.startswith(prefix) and command.endswith("'"), command
    url = urllib.parse.urlsplit(command[len(prefix):-1])
    assert (url.scheme + "://" + url.netloc, url.path) == (viewer.base_url, "/logs")
    assert urllib.parse.parse_qs(url.query) == {"q": ["order"], "level": ["INFO,ERROR"], "since": ["7d"],
                                                "meta.region": ["eu"]}
    # The command as a person would paste it, with their read key in the variable.
    answer = subprocess.run(["sh", "-c", command + " --silent --fail"], capture_output=True, text=True, check=True,
                            env={"LOGFLOW_READ_KEY": viewer.read_key, "PATH": "/usr/bin:/bin"}, timeout=30)
    assert [log["message"].split("\n", 1)[0] for log in json.loads(answer.stdout)["logs"]] == wanted


def test_hostile_logs_are_text_and_the_page_fits_360_pixels(browser, viewer, signed_in):
    with open_tab(browser, viewer.base_url, storage_state=signed_in, viewport=NARROW, **TAB) as page:
        page.goto("/ui/projects/evil")
        shown = [seen_as(log["message"][:500] + "…" if len(log["message"]) > 500 else log["message"])
                 for log in HOSTILE]
        expect_messages(page, shown)
        for index in range(len(HOSTILE)):
            rows(page).nth(index).locator(".summary").click()
        details = rows(page).locator(".detail")
        expect(details).to_have_count(len(HOSTILE))
        for row, log in zip(rows(page).all(), HOSTILE):
            expect(row.locator(".full-message")).to_have_text(seen_as(log["message"]))
            for key, value in log["metadata"].items():
                expect(row.locator(".metadata-tree")).to_contain_text(seen_as(key))
                expect(row.locator(".metadata-tree")).to_contain_text(seen_as(value))
        assert len(rows(page).nth(3).locator(".full-message").text_content()) == BIG
        # "invoice ⟦U+202E⟧fdp.exe is safe": the override is shown, not obeyed (it would read "exe.pdf").
        expect(rows(page).nth(2).locator(".summary .message")).to_have_text("invoice \u27e6U+202E\u27e7fdp.exe is safe")
        # A right-to-left override in a key reverses that key only: its value and buttons keep their places.
        entry = rows(page).nth(2).locator(".metadata-tree li").first
        key, value = entry.locator(".key").bounding_box(), entry.locator(".value").bounding_box()
        keep, drop = (entry.get_by_role("button", name=re.compile("^Filter %s " % verb)).bounding_box()
                      for verb in ("for", "out"))
        assert key["x"] + key["width"] <= value["x"] + 1 and value["x"] + value["width"] <= keep["x"] < drop["x"]
        shot(page, "hostile-360", full_page=True)

        # A value with HTML in its key becomes a chip, as text.
        rows(page).first.get_by_role("button", name="Filter for %s = javascript:alert(2)" % IMG).click()
        expect_messages(page, [IMG])
        expect(page.get_by_role("list", name="Metadata filters")).to_have_text("%s = javascript:alert(2)×" % IMG)
        assert parameters(page) == {"meta." + IMG: ["javascript:alert(2)"]}
        rows(page).first.locator(".summary").click()
        shot(page, "hostile-chip", full_page=True)

        # Nothing came in as markup: no image, no script but the viewer's own, no javascript: link.
        assert page.locator("img").count() == 0
        sources = page.locator("script").evaluate_all("scripts => scripts.map(script => script.src)")
        assert sources == [viewer.base_url + "/ui/static/explore.js"]
        links = page.locator("a").evaluate_all("links => links.map(link => link.protocol)")
        assert set(links) == {"http:"}
        page.goto("/ui/projects/evil")
        expect_messages(page, shown)
        for index in range(len(HOSTILE)):
            rows(page).nth(index).locator(".summary").click()
        expect(details).to_have_count(len(HOSTILE))

        # 360 px: no sideways scrolling, every control inside the screen and reached by Tab.
        width = page.evaluate("[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]")
        assert width[0] <= width[1] == 360, width
        controls = page.locator("input:visible, select:visible, button:visible:enabled, a:visible, [tabindex='0']")
        assert controls.count() > 20
        for control in controls.all():
            control.scroll_into_view_if_needed()
            box = control.bounding_box()
            assert box and 0 <= box["x"] and box["x"] + box["width"] <= 360, (control.evaluate("e => e.outerHTML"), box)
        page.evaluate("window.scrollTo(0, 0)")
        reached = set()
        for _ in range(controls.count() + 20):
            page.keyboard.press("Tab")
            reached.add(controls.evaluate_all("controls => controls.indexOf(document.activeElement)"))
        assert set(range(controls.count())) - reached == set()
        page.wait_for_load_state("load")
        assert page.dialogs == []


@pytest.mark.parametrize("scheme, background", [("dark", "rgb(13, 17, 23)"), ("light", "rgb(255, 255, 255)")])
def test_the_page_follows_the_systems_dark_or_light_scheme(browser, viewer, signed_in, scheme, background):
    with open_tab(browser, viewer.base_url, storage_state=signed_in, color_scheme=scheme, **TAB) as page:
        page.goto("/ui/projects/shop?since=7d")
        expect_messages(page, first_lines(SHOP))
        rows(page).nth(2).locator(".summary").click()
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background
        text = page.evaluate("getComputedStyle(document.querySelector('#logs .message')).color")
        assert text != background
        shot(page, scheme)


def test_explore_on_postgresql_and_redis(browser, seeded, tmp_path, postgres_server, redis_server):
    """The same page on production's backends: the list, a metadata chip, a bar, a permalink."""
    service = make_service(tmp_path, postgres_server.create_database(unique_database_name("explore")),
                           redis_server.url)
    try:
        service.start_web()
        consumer = service.start_consumer()
        logs = SHOP[:40]
        status, reply = post(service.base_url, service.key, json.dumps([wire(log) for log in logs]).encode())
        assert (status, reply["accepted"]) == (202, len(logs)), reply
        service.wait_delivered({log["id"] for log in logs}, consumer)
        create_user(service, "pat", "--project", "e2e")
        with open_tab(browser, service.base_url, **TAB) as page:
            sign_in(page, "pat")
            page.goto("/ui/projects/e2e?since=24h")
            day = first_lines(logs, lambda log: log["timestamp"] >= NOW - datetime.timedelta(hours=24))
            expect_messages(page, day)
            rows(page).first.locator(".summary").click()
            rows(page).first.get_by_role("button", name="Filter for user.id = 0").click()
            expect_messages(page, first_lines(logs, lambda log: log["metadata"]["user"]["id"] == 0
                                              and log["timestamp"] >= NOW - datetime.timedelta(hours=24)))
            assert parameters(page) == {"since": ["24h"], "meta.user.id": ["0"]}
            bar = page.get_by_role("region", name="Logs over time").get_by_role(
                "button", name=re.compile(r": [1-9][0-9]* logs?$")).first
            label = bar.get_attribute("aria-label")
            bar.click()
            start = bucket_start(label)
            until = parse_iso(parameters(page)["until"][0])
            expect_messages(page, first_lines(logs, lambda log: log["metadata"]["user"]["id"] == 0
                                              and start <= log["timestamp"] < until))
            page.goto("/ui/projects/e2e/logs/%s" % logs[20]["id"])
            expect_messages(page, first_lines(logs))
            expect(page.locator("[aria-current=true] .full-message")).to_have_text(logs[20]["message"])
            assert page.dialogs == []
    finally:
        service.close()
