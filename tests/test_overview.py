"""The overview at /ui/, through Flask's test client on both backends: what it shows is what was stored."""
import datetime
import html
import re
import time

from prometheus_client.parser import text_string_to_metric_families

import models
import records
import tasks
from helpers import break_spool, drain_all, post_logs
from models import Project
from test_viewer import add_user, sign_in

HOSTILE = "<img src=x onerror=alert(1)>\u202eevil"


def at(now, **ago):
    """The RFC 3339 text of a moment this long before now."""
    return records.format_time(now - datetime.timedelta(**ago))


def project_items(page):
    """{project name as shown: the text of its overview item}."""
    items = re.findall(r'<li><a href="[^"]*">([^<]*)</a>(.*?)</dl>', page.text, re.S)
    return {html.unescape(name): text for name, text in items}


def shown(item, label):
    """The value the overview shows beside a label of a project's numbers."""
    return re.search(r"<dt>%s</dt><dd>(.*?)</dd>" % re.escape(label), item, re.S).group(1)


def chart_label(item):
    return html.unescape(re.search(r'<svg class="spark"[^>]* aria-label="([^"]*)"', item).group(1))


def writer_row(page, name):
    """The cells of a writer's row in the service table: queued, oldest waiting, in quarantine."""
    row = re.search(r'<tr><th scope="row">%s(?: <span class="problem">paused</span>)?</th>(.*?)</tr>' % name,
                    page.text, re.S).group(1)
    return re.findall(r"<td[^>]*>([^<]*)</td>", row)


def test_counts_per_level_errors_of_the_last_hour_and_the_newest_log_are_those_stored(client, key, project, bound):
    now = models.utcnow()
    sent = ([{"message": "i%d" % n, "level": "info", "timestamp": at(now, hours=2, minutes=n)} for n in range(3)]
            + [{"message": "w", "level": "warn", "timestamp": at(now, hours=5)}] * 2
            + [{"message": "late error", "level": "error", "timestamp": at(now, hours=3)},
               {"message": "recent error", "level": "error", "timestamp": at(now, minutes=10)},
               {"message": "recent critical", "level": "critical", "timestamp": at(now, minutes=50)},
               {"message": "newest", "level": "debug", "timestamp": at(now, minutes=4)},
               {"message": "yesterday", "level": "error", "timestamp": at(now, hours=30)}])
    assert post_logs(client, key, sent).json["accepted"] == len(sent)
    drain_all()
    add_user("ada", project)
    sign_in(client, "ada")
    page = client.get("/ui/")
    assert page.status_code == 200
    item = project_items(page)["acme"]
    assert chart_label(item) == ("Logs over the last 24 hours: 9 logs (1 DEBUG, 3 INFO, 2 WARN, 2 ERROR,"
                                 " 1 CRITICAL)")
    assert shown(item, "Logs, 24 h") == "9"
    assert shown(item, "Errors, last hour") == "2"
    assert '<div class="errors some">' in item
    newest = re.search(r'<time class="local" datetime="([^"]+)"', shown(item, "Newest log")).group(1)
    assert newest == at(now, minutes=4)
    assert "(4 min ago)" in shown(item, "Newest log")
    # The bars add up to what was stored, each bar's tooltip naming its counts.
    bars = re.findall(r'data-label="(\d+) logs? \(([^)]*)\)"', item)
    assert sum(int(total) for total, _ in bars) == 9
    assert ("1", "1 ERROR") in bars and ("2", "2 WARN") in bars
    # A script reads the same numbers from the API the page's numbers come from.
    assert client.get("/logs/histogram?project=acme").json["total"] == 9
    assert client.get("/logs/histogram?project=acme&level=ERROR,CRITICAL&since=1h").json["total"] == 2
    assert client.get("/logs?project=acme&limit=1").json["logs"][0]["timestamp"] == newest


def test_a_project_without_logs_says_so(client, project):
    add_user("ada", project)
    sign_in(client, "ada")
    item = project_items(client.get("/ui/"))["acme"]
    assert chart_label(item) == "Logs over the last 24 hours: 0 logs"
    assert shown(item, "Errors, last hour") == "0" and '<div class="errors">' in item
    assert "none yet" in shown(item, "Newest log")


def test_only_the_persons_projects_each_one_click_from_its_explore_page(client, project, bound):
    with models.database.connection_context():
        Project.create(name="secret")
        web = Project.create(name="web")
        team = Project.create(name="team/api")
    add_user("ada", project, web, team)
    sign_in(client, "ada")
    page = client.get("/ui/")
    assert list(project_items(page)) == ["acme", "team/api", "web"]
    assert "secret" not in page.text
    links = re.findall(r'<li><a href="([^"]+)">', page.text)
    assert links == ["/ui/projects/acme", "/ui/projects/%d" % team.id, "/ui/projects/web"]
    for link in links:
        assert client.get(link).status_code == 200


def test_a_hostile_project_name_is_text(client, bound):
    with models.database.connection_context():
        hostile = Project.create(name=HOSTILE)
    add_user("ada", hostile)
    sign_in(client, "ada")
    page = client.get("/ui/")
    assert list(project_items(page)) == [HOSTILE]
    assert "<img" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;\u202eevil</a>" in page.text


def test_queued_records_and_a_stopped_consumer_are_shown(client, key, project, bound):
    add_user("ada", project)
    sign_in(client, "ada")
    page = client.get("/ui/")
    assert "0 consumers alive" in page.text
    assert "No consumer is running: new records will wait in the queue." in page.text
    assert writer_row(page, "Database") == ["0", "—", "0"]
    post_logs(client, key, [{"message": "a"}, {"message": "b"}])
    post_logs(client, key, [{"message": "c"}])
    page = client.get("/ui/")
    assert "No consumer is running: 3 records waiting in the queue, not written." in page.text
    for writer in ("Database", "Daily files"):
        queued, oldest, quarantined = writer_row(page, writer)
        assert queued == "3" and re.fullmatch(r"\d+ s", oldest) and quarantined == "0"
    # A consumer's heartbeat, as tasks.beat() leaves one.
    tasks.runtime.spool.beat("host:1", time.time())
    page = client.get("/ui/")
    assert "1 consumer alive" in page.text and "No consumer is running" not in page.text
    assert 'class="problems"' not in page.text
    drain_all()
    page = client.get("/ui/")
    assert writer_row(page, "Database") == writer_row(page, "Daily files") == ["0", "—", "0"]
    assert project_items(page)["acme"].count("<rect class=\"level-info\"") == 1


def test_quarantined_records_are_shown_and_in_the_metrics(client, project, bound):
    add_user("ada", project)
    sign_in(client, "ada")
    with models.database.connection_context():
        for number in range(2):
            models.Quarantined.add("db", (project.id, "2026-11-27T10:00:00.000000", {"message": number}),
                                   ValueError("poison"))
    page = client.get("/ui/")
    assert writer_row(page, "Database") == ["0", "—", "2"]
    assert writer_row(page, "Daily files") == ["0", "—", "0"]
    assert "2 records in quarantine: a writer could not store them (manage.py quarantine list)." in page.text
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    gauge = {sample.labels["writer"]: sample.value for family in families for sample in family.samples
             if sample.name == "logflow_quarantine_records"}
    assert gauge == {"db": 2, "file": 0}


def test_the_projects_are_shown_while_the_queue_is_down(client, key, project, bound, tmp_path):
    add_user("ada", project)
    sign_in(client, "ada")
    break_spool(bound, tmp_path)
    page = client.get("/ui/")
    assert page.status_code == 200
    assert list(project_items(page)) == ["acme"]
    assert "The queue does not answer, so the service's state is unknown." in page.text
