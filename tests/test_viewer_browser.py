"""The viewer as a person sees it: Playwright drives Debian's chromium against LogFlow's gunicorn in dev mode.

One gunicorn serves the module; each test has a browser context of its own
(its own cookies) coming, through X-Forwarded-For as a proxy would say, from
an address of its own, so that one test's wrong passwords hold back no other.
"""
import pytest
from playwright.sync_api import expect

import config
import models
from browser import browser, create_user, manage, page, sign_in  # noqa: F401 (browser and page are fixtures)
from processes import Service, dev_mode_environment

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """LogFlow's web process in dev mode, with projects shop, web and secret, and one named HOSTILE with a log."""
    folder = tmp_path_factory.mktemp("viewer")
    env = dev_mode_environment(folder, DATABASE_URL="", PYTHONUNBUFFERED="1")
    service = Service(folder, env, key=None)
    for name in ("shop", "web", "secret"):
        manage(service, "add-project", name)
    # manage.py refuses names with control characters, not this one; it goes in through the models.
    models.bind_database(config.Settings(data_dir=env["LOGFLOW_DATA_DIR"]))
    with models.database.connection_context():
        hostile = models.Project.create(name=HOSTILE)
        now = models.utcnow()
        models.Log.create(id="00000000-0000-7000-8000-000000000001", project=hostile, level="ERROR",
                          message=HOSTILE + "</td></tr></table><script>alert(2)</script>",
                          metadata={HOSTILE: "javascript:alert(3)"}, timestamp=now, received_at=now)
    service.start_web()
    yield service
    service.close()


def test_sign_in_shows_my_projects_and_sign_out_signs_me_out(page, viewer):
    create_user(viewer, "ada", "--project", "shop", "--project", "web")
    page.goto("/")
    expect(page).to_have_url(viewer.base_url + "/ui/login")
    sign_in(page, "ada")
    expect(page).to_have_url(viewer.base_url + "/ui/")
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    assert page.locator(".projects a").all_inner_texts() == ["shop", "web"]
    page.get_by_role("link", name="shop").click()
    expect(page).to_have_url(viewer.base_url + "/ui/projects/shop")
    expect(page.get_by_role("heading", name="shop")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(viewer.base_url + "/ui/login")
    page.goto("/ui/")
    expect(page).to_have_url(viewer.base_url + "/ui/login")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.dialogs == []


def test_a_wrong_password_is_said_and_the_sixth_try_refused(page, viewer):
    create_user(viewer, "bob", "--project", "shop")
    for _ in range(5):
        assert sign_in(page, "bob", "not my password").status == 401
        expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    # Even the right password: the sixth try within five minutes is not checked.
    assert sign_in(page, "bob").status == 429
    expect(page.get_by_role("alert")).to_have_text("Too many wrong passwords. Try again in 5 minutes.")
    expect(page).to_have_url(viewer.base_url + "/ui/login")


def test_a_project_i_may_not_read_is_not_found_as_an_unknown_one(page, viewer):
    create_user(viewer, "carol", "--project", "shop")
    sign_in(page, "carol")
    assert page.locator(".projects a").all_inner_texts() == ["shop"]
    forbidden = page.goto("/ui/projects/secret")
    shown = page.locator("main").inner_text()
    expect(page.get_by_role("heading", name="Not Found")).to_be_visible()
    unknown = page.goto("/ui/projects/no-such-project")
    assert (forbidden.status, unknown.status) == (404, 404)
    assert page.locator("main").inner_text() == shown
    assert page.goto("/ui/projects/shop").status == 200


def test_removing_a_user_signs_their_open_browser_out_at_once(page, viewer):
    create_user(viewer, "dave", "--all-projects")
    sign_in(page, "dave")
    expect(page.get_by_role("link", name="shop")).to_be_visible()
    assert "removed user dave; 1 session ended" in manage(viewer, "remove-user", "dave")
    page.get_by_role("link", name="web").click()
    expect(page).to_have_url(viewer.base_url + "/ui/login?next=/ui/projects/web")
    expect(page.get_by_label("Username")).to_be_visible()


def test_a_hostile_project_name_and_log_are_shown_as_text_and_run_nothing(page, viewer):
    create_user(viewer, "erin", "--all-projects")
    sign_in(page, "erin")
    # The CSP would stop an injected handler by itself: no dialog alone proves nothing, so the DOM is checked too.
    link = page.get_by_role("link", name=HOSTILE)
    expect(link).to_have_text(HOSTILE)
    assert page.locator("main img").count() == 0
    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE)
    log = page.get_by_role("list", name="Logs, newest first").get_by_role("listitem")
    expect(log).to_contain_text(HOSTILE + "</td></tr></table><script>alert(2)</script>")
    log.get_by_role("button", expanded=False).click()
    metadata = log.locator(".metadata-tree")
    expect(metadata).to_contain_text(HOSTILE)
    expect(metadata).to_contain_text("javascript:alert(3)")
    expect(log.get_by_role("link")).to_have_text(["Permalink"])
    assert page.locator("main img").count() == 0
    # The only scripts are the viewer's own files: none came in with the log.
    sources = page.locator("script").evaluate_all("scripts => scripts.map(script => script.src)")
    assert sources and all(source.startswith(viewer.base_url + "/ui/static/") for source in sources)
    page.wait_for_load_state("load")
    assert page.dialogs == []
