"""What the browser tests share: Debian's chromium driven by Playwright, a tab of its own per test, and signing in.

A test module imports the `browser` and `page` fixtures and defines a
module-scoped `viewer` fixture: the running Service whose base_url the tabs open.
"""
import contextlib
import itertools
import os
import subprocess
import sys

import pytest
from playwright.sync_api import sync_playwright

from conftest import unavailable
from processes import ROOT

CHROMIUM = "/usr/bin/chromium"
# As root in a container: no sandbox, no GPU, nothing fetched from Google's servers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"
# Each tab comes, through X-Forwarded-For as a proxy would say, from an address of its own,
# so that one test's wrong passwords hold back no other.
addresses = ("198.51.100.%d" % number for number in itertools.count(1))


@pytest.fixture(scope="module")
def browser():
    """Headless chromium, launched by its path (Playwright cannot download its own browsers here)."""
    if not os.access(CHROMIUM, os.X_OK):
        unavailable("%s is missing (apt-get install chromium)" % CHROMIUM)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextlib.contextmanager
def open_tab(browser, base_url, **options):
    """A tab in a browser context of its own (options as Browser.new_context takes them); tab.dialogs lists every
    alert, confirm or prompt it raised."""
    context = browser.new_context(base_url=base_url, extra_http_headers={"X-Forwarded-For": next(addresses)},
                                  **options)
    tab = context.new_page()
    tab.set_default_timeout(20_000)  # a loaded machine, shared with other test runs
    tab.dialogs = []

    def record(dialog):
        tab.dialogs.append(dialog.message)
        dialog.dismiss()
    tab.on("dialog", record)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def page(browser, viewer):
    """A tab of its own on the module's viewer."""
    with open_tab(browser, viewer.base_url) as tab:
        yield tab


def manage(service, *arguments, stdin=None):
    """Run manage.py in the service's environment; returns its standard output."""
    return subprocess.run([sys.executable, "manage.py", *arguments], cwd=ROOT, env=service.env, input=stdin,
                          capture_output=True, text=True, check=True).stdout


def create_user(service, name, *options):
    manage(service, "create-user", name, *options, "--password-stdin", stdin=PASSWORD + "\n")


def sign_in(page, name, password=PASSWORD):
    """Fill in the sign-in form by its labels and press its button; returns the response to the form."""
    if not page.url.endswith("/ui/login"):
        page.goto("/ui/login")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    with page.expect_response(lambda response: response.request.method == "POST") as sent:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return sent.value
