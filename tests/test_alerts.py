"""Alerts: rules evaluated over stored logs, notifications recorded, then delivered to real receivers."""
import datetime
import email
import email.policy
import hashlib
import hmac
import pathlib
import ssl
import threading
import urllib.parse

import orjson
import pytest

import alerts
import models
import notify
import query
import tasks
from helpers import drain_all, post_logs
from processes import ROOT
from receivers import certificate, receiver, smtp_server

# Minutes before now, so that notifications are as young as they are in service (a day old ones are given up).
T0 = models.utcnow().replace(second=0, microsecond=0) - datetime.timedelta(minutes=15)
ISO = "%Y-%m-%dT%H:%M:%SZ"


def minutes(n):
    return T0 + datetime.timedelta(minutes=n)


def errors_at(client, key, when, count, message="timeout talking to db"):
    """Post `count` ERROR logs timestamped `when`, and store them as a consumer would."""
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    response = post_logs(client, key, [{"message": "%s %d" % (message, n), "level": "error", "timestamp": stamp,
                                        "metadata": {"service": "api"}} for n in range(count)])
    assert response.status_code == 202, response.get_json()
    drain_all()


@pytest.fixture
def private(bound):
    """Settings that let alerts notify 127.0.0.1, where the tests' receivers listen."""
    settings = bound.replace(allow_private_webhooks=True, notify_timeout_seconds=2)
    tasks.runtime.settings = settings
    return settings


@pytest.fixture
def hook():
    with receiver() as server:
        yield server


def add(project, settings, name="errors", query="level=ERROR&q=timeout", kind="threshold", window=5,
        channel="webhook", target=None, threshold=10, repeat=None):
    with models.database.connection_context(), models.database.atomic():
        search = alerts.save_search(project, name, query)
        rule, secret = alerts.add_rule(search, kind, window, channel, target, settings,
                                       threshold=threshold, repeat_minutes=repeat)
        models.AlertRule.update(due_at=T0).where(models.AlertRule.id == rule.id).execute()
    return rule, secret


def run_minute(settings, when):
    """One consumer's minute: evaluate what is due at `when`, then deliver every due notification."""
    with models.database.connection_context():
        made = alerts.evaluate_due(settings, now=when)
        for notification_id in alerts.due_notifications(now=datetime.datetime.max):
            alerts.deliver(notification_id, settings)
    return made


def documented_recipe():
    """The code block that follows `<!-- recipe: verify -->` in docs/alerts.md, run: its namespace."""
    text = (pathlib.Path(ROOT) / "docs" / "alerts.md").read_text()
    code = text.split("<!-- recipe: verify -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(code, "docs/alerts.md", "exec"), namespace)
    return namespace


def verify(secret, headers, body):
    """The receiver's check exactly as docs/alerts.md shows it, given the headers as a receiver's framework names them."""
    named = {"X-LogFlow-Timestamp": headers["x-logflow-timestamp"],
             "X-LogFlow-Signature": headers["x-logflow-signature"]}
    return documented_recipe()["verify"](secret, named, body)


def rule_row(rule):
    with models.database.connection_context():
        return models.AlertRule.get_by_id(rule.id)


def test_a_threshold_fires_once_then_resolves_once(client, key, project, private, hook):
    rule, secret = add(project, private, target=hook.url)
    errors_at(client, key, minutes(-1), 12)
    errors_at(client, key, minutes(-1), 30, message="unrelated failure")  # ERROR, but not "timeout"
    assert len(run_minute(private, minutes(0))) == 1
    [(headers, body)] = hook.wait_for(1)
    sent = orjson.loads(body)
    assert verify(secret, headers, body)
    assert not verify("whsec_other", headers, body) and not verify(secret, headers, body + b" ")
    # A replay with an older timestamp fails the signature; one with its own, the freshness check.
    older = {"X-LogFlow-Timestamp": str(int(headers["x-logflow-timestamp"]) - 600),
             "X-LogFlow-Signature": headers["x-logflow-signature"]}
    assert not documented_recipe()["verify"](secret, older, body)
    same = dict(older, **{"X-LogFlow-Timestamp": headers["x-logflow-timestamp"]})
    assert not documented_recipe()["verify"](secret, same, body, tolerance=-1)
    assert headers["x-logflow-delivery"] == sent["id"] and headers["content-type"] == "application/json"
    assert (sent["alert"], sent["project"], sent["state"], sent["count"], sent["window_minutes"]) == (
        "errors", "acme", "firing", 12, 5)
    assert len(sent["samples"]) == 5 and all("timeout" in log["message"] for log in sent["samples"])
    url = urllib.parse.urlsplit(sent["url"])
    assert url.path == "/ui/projects/acme"
    assert urllib.parse.parse_qs(url.query) == {"level": ["ERROR"], "q": ["timeout"],
                                                "since": [minutes(-5).strftime(ISO)], "until": [T0.strftime(ISO)]}
    assert rule_row(rule).state == "firing"

    # Still firing: no repeat was asked for, so nothing is sent.
    errors_at(client, key, minutes(1), 10)
    assert run_minute(private, minutes(2)) == []
    assert rule_row(rule).state == "firing"
    # The logs leave the window: one "resolved", then quiet.
    assert len(run_minute(private, minutes(9))) == 1
    assert run_minute(private, minutes(10)) == []
    bodies = [orjson.loads(body) for _, body in hook.wait_for(2)]
    assert [b["state"] for b in bodies] == ["firing", "resolved"] and len(hook.received) == 2
    assert bodies[1]["count"] == 0 and bodies[1]["samples"] == []
    with models.database.connection_context():
        evaluations = [(e.count, e.state) for e in rule.evaluations.order_by(models.AlertEvaluation.at)]
    assert evaluations == [(12, "firing"), (22, "firing"), (0, "ok"), (0, "ok")]


def test_a_rule_repeats_only_as_often_as_asked(client, key, project, private, hook):
    add(project, private, target=hook.url, threshold=1, repeat=3)
    for minute in range(0, 7):
        errors_at(client, key, minutes(minute) - datetime.timedelta(seconds=30), 1)
        run_minute(private, minutes(minute))
    assert [orjson.loads(body)["state"] for _, body in hook.received] == ["firing"] * 3  # minutes 0, 3 and 6


def test_an_absence_rule_fires_when_nothing_matches_and_resolves_when_a_log_comes(client, key, project, private,
                                                                                  hook):
    add(project, private, name="backup", query="q=backup+done", kind="absence", window=60, target=hook.url,
        threshold=None)
    errors_at(client, key, minutes(-90), 1, message="backup done")  # before the window
    run_minute(private, minutes(0))
    errors_at(client, key, minutes(0), 1, message="backup done")
    run_minute(private, minutes(1))
    states = [(orjson.loads(body)["state"], orjson.loads(body)["count"]) for _, body in hook.wait_for(2)]
    assert states == [("firing", 0), ("resolved", 1)]


def test_a_deactivated_projects_rules_wait(project, private, hook):
    rule, _ = add(project, private, name="quiet", query="", kind="absence", window=5, target=hook.url, threshold=None)
    with models.database.connection_context():
        models.Project.update(is_active=False).execute()
        assert alerts.evaluate_due(private, now=minutes(0)) == [] and rule.evaluations.count() == 0
        models.Project.update(is_active=True).execute()
        assert len(alerts.evaluate_due(private, now=minutes(0))) == 1


def test_records_still_queued_do_not_make_an_absence_rule_fire(client, key, project, private, hook):
    rule, _ = add(project, private, name="heartbeat", query="q=alive", kind="absence", window=5, target=hook.url,
                  threshold=None)
    errors_at(client, key, minutes(-4), 1, message="alive")
    # The writer is 3 minutes behind: the window ends where what is stored ends, and still holds the log.
    with models.database.connection_context():
        alerts.evaluate_due(private, lag_seconds=180, now=minutes(2))
        assert rule_row(rule).state == "ok"
        [evaluation] = rule.evaluations
    assert evaluation.count == 1 and "180 s behind" in evaluation.note


def test_each_rule_is_evaluated_once_a_minute_however_many_consumers_try(client, key, project, private, hook):
    rule, _ = add(project, private, target=hook.url, threshold=1)
    errors_at(client, key, minutes(-1), 3)
    results, barrier = [], threading.Barrier(4)

    def consumer():
        with models.database.connection_context():
            barrier.wait()
            results.append(alerts.evaluate_due(private, now=minutes(0)))
    threads = [threading.Thread(target=consumer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(len(made) for made in results) == [0, 0, 0, 1]
    with models.database.connection_context():
        assert rule.evaluations.count() == 1 and rule.notifications.count() == 1
    # The same minute again: already taken.
    assert run_minute(private, minutes(0) + datetime.timedelta(seconds=30)) == []
    assert len(hook.wait_for(1)) == 1


def test_a_receiver_answering_500_gets_the_same_notification_again(client, key, project, private, hook):
    rule, _ = add(project, private, target=hook.url, threshold=1)
    hook.plan = [500, 429]
    errors_at(client, key, minutes(-1), 1)
    with models.database.connection_context():
        [notification_id] = alerts.evaluate_due(private, now=minutes(0))
        assert alerts.deliver(notification_id, private) == "retry"
        assert "500" in rule_row(rule).last_error
        # Not due again until its backoff has passed: nobody takes it meanwhile.
        assert alerts.deliver(notification_id, private) is None
        models.Notification.update(due_at=T0).execute()
        assert alerts.deliver(notification_id, private) == "retry"
        row = models.Notification.get_by_id(notification_id)
        # The receiver's Retry-After (1 s) is less than the backoff (10 s for a second attempt): the backoff wins.
        assert 9 <= (row.due_at - models.utcnow()).total_seconds() <= 11
        models.Notification.update(due_at=T0).execute()
        assert alerts.deliver(notification_id, private) == "sent"
        assert rule_row(rule).last_error is None
    deliveries = hook.wait_for(3)
    assert {headers["x-logflow-delivery"] for headers, _ in deliveries} == {notification_id}
    assert len({body for _, body in deliveries}) == 1


def test_a_receiver_that_hangs_times_out_and_is_retried(client, key, project, private, hook):
    rule, _ = add(project, private, target=hook.url, threshold=1)
    hook.plan = ["hang"]
    errors_at(client, key, minutes(-1), 1)
    with models.database.connection_context():
        [notification_id] = alerts.evaluate_due(private, now=minutes(0))
        started = datetime.datetime.now()
        assert alerts.deliver(notification_id, private) == "retry"
        assert (datetime.datetime.now() - started).total_seconds() < 3 * private.notify_timeout_seconds
        assert "timed out" in rule_row(rule).last_error


def test_private_addresses_are_refused_when_added_and_when_sent(client, key, project, bound, private, hook):
    for target in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x",
                   "http://0.0.0.0/", "http://localhost:9/"):
        with pytest.raises(alerts.AlertError, match="loopback or link-local"):
            add(project, bound, name="x", target=target)
    for target, problem in (("ftp://example.com/", "not an http"), ("http://u:p@example.com/", "user or password")):
        with pytest.raises(alerts.AlertError, match=problem):
            add(project, bound, name="x", target=target)
    # Added while allowed, sent after it no longer is: refused again, at send time, and not retried.
    rule, _ = add(project, private, target=hook.url, threshold=1)
    errors_at(client, key, minutes(-1), 1)
    with models.database.connection_context():
        [notification_id] = alerts.evaluate_due(bound, now=minutes(0))
        assert alerts.deliver(notification_id, bound) == "failed"
        assert "loopback" in rule_row(rule).last_error
    assert hook.received == []


def test_slack_messages_are_readable_and_log_content_cannot_mention_anyone(client, key, project, private, hook):
    add(project, private, channel="slack", target=hook.url, threshold=1)
    errors_at(client, key, minutes(-1), 1, message="timeout <!channel> <https://evil.example|click> & more")
    run_minute(private, minutes(0))
    [(headers, body)] = hook.wait_for(1)
    text = orjson.loads(body)["text"]
    assert text.startswith("*FIRING: alert errors (acme): 1 matching log in 5 minutes*")
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; more" in text
    assert "<!channel>" not in text and "x-logflow-signature" not in headers
    assert text.endswith("|Open these logs in LogFlow>") and "<http://127.0.0.1:5000/ui/projects/acme?" in text


def test_email_alerts_arrive_as_text_and_html(client, key, project, private):
    with smtp_server() as (url, mailbox):
        settings = private.replace(smtp_url=url, smtp_from="alerts@example.com")
        add(project, settings, channel="email", target="oncall@example.com", threshold=1)
        errors_at(client, key, minutes(-1), 2, message="timeout <b>bold</b>")
        run_minute(settings, minutes(0))
        [(sender, recipients, content)] = mailbox.messages
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert (sender, recipients) == ("alerts@example.com", ["oncall@example.com"])
    assert message["Subject"] == "FIRING: alert errors (acme): 2 matching logs in 5 minutes"
    text = message.get_body(("plain",)).get_content()
    page = message.get_body(("html",)).get_content()
    assert "timeout <b>bold</b> 0" in text and "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page


def test_bad_rules_are_refused_with_a_reason(project, private, hook):
    for query, problem in (("since=1h", "'since'"), ("level=LOUD", "level"), ("limit=5", "'limit'")):
        with pytest.raises(alerts.AlertError, match=problem):
            add(project, private, name="x", query=query, target=hook.url)
    with pytest.raises(alerts.AlertError, match="already has a saved search named dup"):
        add(project, private, name="dup", target=hook.url)
        add(project, private, name="dup", target=hook.url)
    with pytest.raises(alerts.AlertError, match="not an email"):
        add(project, private, name="mail", channel="email", target="not-an-address")


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"id":"x"}'
    assert notify.signature("whsec_k", 1700000000, body) == "sha256=" + hmac.new(
        b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()


def test_a_minute_without_the_tables_is_logged_not_raised(bound, caplog):
    """A consumer upgraded before init-db ran: one line a minute, no traceback, nothing evaluated."""
    with models.database.connection_context():
        models.database.drop_tables([models.Notification, models.AlertEvaluation, models.AlertMinute,
                                     models.AlertRule])
    with caplog.at_level("ERROR", logger="logflow"):
        tasks.evaluate_alerts.call_local()
    [record] = caplog.records
    assert record.getMessage().startswith("alerts not evaluated this minute: ") and "alert_rules" in record.getMessage()
    assert record.exc_info is None


def test_metrics_count_notifications_sent_and_failed_per_channel(client, key, project, private, hook):
    add(project, private, target=hook.url, threshold=1)
    hook.plan = [503]
    errors_at(client, key, minutes(-1), 1)
    with models.database.connection_context():
        [notification_id] = alerts.evaluate_due(private, now=minutes(0))
        alerts.deliver(notification_id, private, tasks.runtime.spool.add_counters)
        models.Notification.update(due_at=T0).execute()
        alerts.deliver(notification_id, private, tasks.runtime.spool.add_counters)
    page = client.get("/metrics").get_data(as_text=True)
    assert 'logflow_notifications_sent_total{channel="webhook"} 1.0' in page
    assert 'logflow_notifications_failed_total{channel="webhook"} 1.0' in page


def test_saved_searches_through_the_api(client, project, read_key, key):
    headers = {"X-API-Key": read_key}
    created = client.post("/searches", json={"name": "api timeouts", "query": "level=ERROR&q=timeout"},
                          headers=headers)
    assert created.status_code == 201 and created.json["alert"] is None
    assert client.post("/searches", json={"name": "api timeouts", "query": ""}, headers=headers).status_code == 409
    refused = client.post("/searches", json={"name": "x", "query": "since=1h"}, headers=headers)
    assert refused.status_code == 400 and "'since'" in refused.json["error"]
    assert client.post("/searches", json={"name": "x"}, headers={"X-API-Key": key}).status_code == 403
    assert client.post("/searches", data=b"x" * 20000, headers=headers,
                       content_type="application/json").status_code == 413
    listed = client.get("/searches", headers=headers).json["searches"]
    assert [(s["name"], s["query"]) for s in listed] == [("api timeouts", "level=ERROR&q=timeout")]
    with models.database.connection_context():
        assert [s.name for s in models.SavedSearch.select()] == ["api timeouts"]
    assert client.delete("/searches/api%20timeouts", headers=headers).status_code == 204
    assert client.delete("/searches/api%20timeouts", headers=headers).status_code == 404
    with models.database.connection_context():
        assert models.SavedSearch.select().count() == 0


def test_the_command_line_adds_lists_tests_and_removes_alerts(run, project, hook, bound):
    private = {"LOGFLOW_ALLOW_PRIVATE_WEBHOOKS": "1"}
    added = run("alert", "add", "acme", "errors", "--query", "level=ERROR&q=timeout", "--threshold", "10",
                "--window", "5", "--webhook", hook.url, **private)
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "\n" not in secret and "shown once" in added.stderr
    with models.database.connection_context():
        [rule] = models.AlertRule.select()
        assert (rule.search.query, rule.kind, rule.threshold, rule.window_minutes) == (
            "level=ERROR&q=timeout", "threshold", 10, 5)
    listed = run("alert", "list", "acme")
    assert "errors" in listed.stdout and "webhook" in listed.stdout and " ok " in listed.stdout
    assert secret not in listed.stdout

    tested = run("alert", "test", "acme", "errors", **private)
    assert tested.exit_code == 0 and "delivered by webhook" in tested.stdout, tested.output
    [(headers, body)] = hook.wait_for(1)
    assert orjson.loads(body)["state"] == "test" and verify(secret, headers, body)

    # An existing saved search can carry an absence alert to email, named by the search.
    assert run("search", "add", "acme", "backup", "q=backup done").exit_code == 0
    mailed = run("alert", "add", "acme", "backup", "--absent-for", "1500", "--email", "ops@example.com")
    assert mailed.exit_code == 0 and mailed.stdout == "", mailed.output
    assert "backup" in run("search", "list", "acme").stdout

    assert run("alert", "remove", "acme", "errors").exit_code == 0
    with models.database.connection_context():
        assert [s.name for s in models.SavedSearch.select()] == ["backup"]


@pytest.mark.parametrize("arguments, problem", [
    (["--threshold", "10", "--webhook", "https://example.com/h"], "either --threshold N --window MINUTES"),
    (["--absent-for", "5", "--threshold", "1", "--window", "5", "--webhook", "https://example.com/h"], "either"),
    (["--absent-for", "5"], "give one channel"),
    (["--absent-for", "5", "--webhook", "https://example.com/h", "--email", "a@example.com"], "give one channel"),
    (["--absent-for", "5", "--webhook", "http://169.254.169.254/latest/"], "loopback or link-local"),
    (["--absent-for", "5", "--query", "until=now", "--webhook", "https://example.com/h"], "'until'"),
])
def test_the_command_line_refuses_a_bad_alert_in_one_line(run, project, arguments, problem):
    result = run("alert", "add", "acme", "x", *arguments)
    assert result.exit_code != 0 and problem in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with models.database.connection_context():
        assert models.SavedSearch.select().count() == 0 and models.AlertRule.select().count() == 0


def test_a_level_only_rule_counts_from_the_per_minute_counts_exactly_at_its_edges(client, key, project, private,
                                                                                    hook):
    """level=... reads models.LogCount for whole minutes and the rows only at the window's part-minute ends."""
    rule, _ = add(project, private, name="levels", query="level=ERROR,CRITICAL", window=3, target=hook.url,
                  threshold=1)
    now = minutes(0) + datetime.timedelta(seconds=20)  # the window is 09:57:20 .. 10:00:20 on T0's clock
    for offset in (-200, -181, -179, -150, -120, -61, -1, 0, 5):  # seconds from now
        level = "critical" if offset % 2 else "error"
        response = post_logs(client, key, [{"message": "m", "level": level, "timestamp": (
            now + datetime.timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}])
        assert response.status_code == 202
    errors_at(client, key, minutes(-2), 3)
    post_logs(client, key, [{"message": "quiet", "level": "info", "timestamp": minutes(-1).isoformat() + "Z"}])
    drain_all()
    with models.database.connection_context():
        alerts.evaluate_due(private, now=now)
        expected = models.Log.select().where(
            models.Log.level.in_(["ERROR", "CRITICAL"]), models.Log.timestamp >= now - datetime.timedelta(minutes=3),
            models.Log.timestamp < now).count()
        assert (rule_row(rule).last_count, expected) == (8, 8)  # -179, -150, -120, -61, -1 and the 3 errors


def test_counting_stops_at_the_cap_and_the_notification_says_so(client, key, project, private, hook, monkeypatch):
    monkeypatch.setattr(alerts, "COUNT_CAP", 5)
    rule, _ = add(project, private, target=hook.url, threshold=3)
    errors_at(client, key, minutes(-1), 12)
    run_minute(private, minutes(0))
    [(_, body)] = hook.wait_for(1)
    sent = orjson.loads(body)
    assert (sent["count"], sent["count_capped"]) == (5, True) and rule_row(rule).last_count == 5
    assert notify.headline(sent) == "FIRING: alert errors (acme): 5 or more matching logs in 5 minutes"


def test_a_process_runs_one_evaluation_pass_at_a_time(project, private, hook, caplog):
    rule, _ = add(project, private, name="quiet", query="", kind="absence", window=5, target=hook.url, threshold=None)
    with tasks.alert_pass, caplog.at_level("WARNING", logger="logflow"):
        tasks.evaluate_alerts.call_local()
    assert "still running" in caplog.text
    with models.database.connection_context():
        assert rule.evaluations.count() == 0
    tasks.evaluate_alerts.call_local()
    with models.database.connection_context():
        assert rule.evaluations.count() == 1


def test_a_long_window_counts_its_settled_minutes_once_and_its_last_minutes_every_time(client, key, project,
                                                                                       private, hook):
    rule, _ = add(project, private, name="hour", query="q=timeout", window=60, target=hook.url, threshold=1000)

    def exact(now):
        with models.database.connection_context():
            return models.Log.select().where(models.Log.message.contains("timeout"),
                                             models.Log.timestamp >= now - datetime.timedelta(minutes=60),
                                             models.Log.timestamp < now).count()

    def evaluated(now):
        with models.database.connection_context():
            alerts.evaluate(rule_row(rule), private, now)
            return rule_row(rule).last_count
    for minute in (-70, -59, -30, -6, -2):
        errors_at(client, key, minutes(minute) + datetime.timedelta(seconds=10), 2)
    now = minutes(0) + datetime.timedelta(seconds=30)
    assert evaluated(now) == exact(now) == 8
    with models.database.connection_context():
        stored = dict(models.AlertMinute.select(models.AlertMinute.minute, models.AlertMinute.count).tuples())
    # Settled: the whole minutes from the window's start to 5 before now's (-59, -30 and -6 in them).
    assert len(stored) == 54 and sum(stored.values()) == 6

    # Logs written late, timestamped within the last minutes, are counted: those are counted again each time.
    errors_at(client, key, minutes(-3), 3)
    later = now + datetime.timedelta(minutes=1)
    assert evaluated(later) == exact(later) == 9  # -59 has left the window
    # Settled minutes are read, not counted again: rows removed from them still count (as stored),
    # and the minute that left the window no longer does.
    with models.database.connection_context():
        models.Log.delete().where(models.Log.timestamp < minutes(-20)).execute()
        assert models.AlertMinute.select().where(models.AlertMinute.minute < query.micros(
            minutes(-59)) // query.ROLLUP_STEP).count() == 0
    assert evaluated(later) == 9 and exact(later) == 7


def test_email_goes_over_starttls_with_a_login_and_never_logs_in_without_tls(client, key, project, private, tmp_path,
                                                                             monkeypatch):
    cert, key_file = certificate(tmp_path)
    # The client trusts this certificate the way it trusts any: through the default verify paths.
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_file)
    with smtp_server(tls_context=context, login=("alerts", "p@ss word")) as (url, mailbox):
        host = url.removeprefix("smtp://")
        settings = private.replace(smtp_url="smtp://alerts:p%40ss%20word@" + host, smtp_from="alerts@example.com")
        rule, _ = add(project, settings, channel="email", target="oncall@example.com", threshold=1)
        errors_at(client, key, minutes(-1), 1)
        run_minute(settings, minutes(0))
        assert len(mailbox.messages) == 1 and rule_row(rule).last_error is None
        wrong = private.replace(smtp_url="smtp://alerts:nope@" + host)
        with models.database.connection_context():
            assert alerts.deliver(alerts.record_test(rule, wrong), wrong) == "failed"
            assert "535" in rule_row(rule).last_error  # the server's "authentication failed"
    # A server that offers no STARTTLS never sees the password.
    with smtp_server() as (url, plain):
        settings = private.replace(smtp_url="smtp://alerts:secret@" + url.removeprefix("smtp://"))
        with models.database.connection_context():
            assert alerts.deliver(alerts.record_test(rule, settings), settings) == "failed"
            assert "no STARTTLS" in rule_row(rule).last_error and plain.messages == []


def test_every_consumer_schedules_the_evaluation_at_every_minute():
    # tests/test_alerts_e2e.py enqueues the task itself rather than wait for huey's clock: this is the clock.
    minutes = [datetime.datetime(2026, 12, 6, hour, minute) for hour in range(24) for minute in range(60)]
    assert all(tasks.evaluate_alerts.s().validate_datetime(at) for at in minutes)
    assert not tasks.prune_hourly.s().validate_datetime(datetime.datetime(2026, 12, 6, 3, tasks.PRUNE_MINUTE + 1))
