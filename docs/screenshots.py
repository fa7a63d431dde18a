"""Make the pictures of the viewer in the README and docs/viewer.md: docs/explore-{light,dark}.png and docs/overview-{light,dark}.png.

    python3 docs/screenshots.py

Starts LogFlow in dev mode in a temporary folder (the Procfile's web line and a
consumer), sends a day of made-up logs through POST /logs, and photographs the
pages in Debian's chromium (/usr/bin/chromium) as the browser tests drive it.
"""
import datetime
import json
import pathlib
import random
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, create_user, manage  # noqa: E402
from processes import Service, dev_mode_environment, send, wait_for  # noqa: E402

DOCS = ROOT / "docs"
SERVICES = ["checkout", "payments", "search"]
PATHS = ["/api/cart", "/api/orders", "/api/products/4411", "/api/search?q=lamp", "/healthz"]


def made_up_logs(count, now, rng):
    """A day of a small shop's logs: mostly access lines, some warnings, a few errors with a traceback."""
    logs = []
    for _ in range(count):
        at = now - datetime.timedelta(seconds=rng.random() ** 1.5 * 86400)
        service, path = rng.choice(SERVICES), rng.choice(PATHS)
        roll = rng.random()
        if roll < 0.05:
            level, status = "ERROR", 500
            message = ("payment provider timed out after 10000 ms\nTraceback (most recent call last):\n"
                       "  File \"payments/charge.py\", line 88, in charge\n    response = client.post(url, json=body)\n"
                       "TimeoutError: read timed out")
        elif roll < 0.15:
            level, status = "WARN", 429
            message = "rate limit reached for client %d; retry in 2 s" % rng.randrange(100, 999)
        elif roll < 0.35:
            level, status = "DEBUG", 200
            message = "cache miss for product %d" % rng.randrange(1000, 9999)
        else:
            level, status = "INFO", rng.choice([200, 200, 200, 201, 304, 404])
            message = "GET %s %d in %d ms" % (path, status, rng.randrange(2, 400))
        logs.append({"message": message, "level": level, "timestamp": at.isoformat() + "Z",
                     "metadata": {"service": service, "request_id": "%012x" % rng.getrandbits(48),
                                  "http": {"method": "GET", "path": path, "status": status},
                                  "user": rng.choice(["alice", "bob", "carol", None])}})
    return logs


def main():
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        service = Service(folder, dev_mode_environment(folder, DATABASE_URL="", PYTHONUNBUFFERED="1"), key=None)
        try:
            create_user(service, "ada", "--all-projects")
            keys = {name: manage(service, "add-project", name).strip() for name in ("shop", "billing", "search")}
            service.start_web()
            service.start_consumer()
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            for name, count in (("shop", 3000), ("billing", 600), ("search", 200)):
                logs = made_up_logs(count, now, rng)
                for start in range(0, len(logs), 500):
                    status = send(service.base_url, keys[name], json.dumps(logs[start:start + 500]).encode())[0]
                    assert status == 202, status
            photograph(service)
        finally:
            service.close()


def photograph(service):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for scheme in ("light", "dark"):
            context = browser.new_context(base_url=service.base_url, color_scheme=scheme,
                                          viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page = context.new_page()
            page.goto("/ui/login")
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/ui/")
            # Every log written, so the pictures show them all.
            wait_for(lambda: written(page, "shop") == 3000, timeout=120, interval=1,
                     message="the consumer to write the logs")
            page.reload()
            page.screenshot(path=str(DOCS / ("overview-%s.png" % scheme)))
            page.goto("/ui/projects/shop?since=24h&live=1")
            rows = page.get_by_role("list", name="Logs, newest first").get_by_role("listitem")
            expect(rows.first).to_be_visible()
            rows.nth(1).get_by_role("button").first.click()
            page.wait_for_timeout(2500)  # past the arrival highlight of the live rows
            page.screenshot(path=str(DOCS / ("explore-%s.png" % scheme)))
            context.close()
        browser.close()
    print("wrote", ", ".join("docs/%s-%s.png" % (name, scheme) for name in ("overview", "explore")
                             for scheme in ("light", "dark")))


def written(page, project):
    """How many of the project's logs of the last two days are stored, read as the viewer reads them."""
    response = page.request.get("/logs/histogram?project=%s&since=2d" % project)
    return response.json()["total"] if response.ok else -1


if __name__ == "__main__":
    main()
