"""Saved searches and alert rules: evaluate each rule once a minute, decide and record its notifications.

A rule is evaluated by whichever consumer claims its minute first (claim):
several consumers on several hosts evaluate it once between them. What an
evaluation decides to send is written, in the same transaction as the rule's
new state, to the notifications table before anything is sent; deliver()
then sends it at least once, from any consumer, under a lease.
"""
import datetime
import logging
import secrets
import urllib.parse
import uuid

import orjson
import peewee
from peewee import EXCLUDED, SQL

import metrics
import notify
import query
import records
from models import (AlertEvaluation, AlertMinute, AlertRule, Notification, Project, SavedSearch, database,
                    durable_transaction, on_postgres, using_primary, using_replica, utcnow)

logger = logging.getLogger("logflow")

KINDS = ("threshold", "absence")
# A saved search holds filters only: the rule's window sets the time range.
FILTER_PARAMETERS = ("q", "level", "min_level")
MAX_QUERY_LENGTH = 4096
MAX_WINDOW_MINUTES = 7 * 24 * 60
SAMPLES = 5
# Counting stops here (or at a higher threshold, or at 1 for an absence): a notification then
# says "10000 or more" (count_capped).
COUNT_CAP = 10_000
# A window's last minutes are counted from the rows at every evaluation; older ones once (count_rows).
RECOUNT_MINUTES = 5
# Evaluations kept per rule, for `alert list` and the viewer.
EVALUATIONS_KEPT = datetime.timedelta(days=1)
# One attempt holds a notification for this many timeouts (connect, send, answer) plus a margin,
# after which another consumer may take it: the one sending may have died.
LEASE_TIMEOUTS = 3
LEASE_MARGIN_SECONDS = 5
# A read replica further behind than this is not counted on: its logs stop at a time the rules are
# no longer about (a replica cut off from its primary falls further behind every minute).
MAX_REPLICA_LAG_SECONDS = 60


class AlertError(ValueError):
    """A saved search or rule that cannot be made as asked; the message says why."""


class NameTaken(AlertError):
    """The project has a saved search of that name already."""


def search_filter(text):
    """The LogFilter of a saved search's query string; raises AlertError naming a parameter it cannot hold."""
    if len(text) > MAX_QUERY_LENGTH:
        raise AlertError("the query is longer than %d characters" % MAX_QUERY_LENGTH)
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=100)
    for name, _ in pairs:
        if name not in FILTER_PARAMETERS and not name.startswith("meta."):
            raise AlertError("a saved search holds q, level, min_level and meta.<path> only, not %r"
                             " (the rule's window sets the time range)" % name[:64])
    try:
        return query.parse_filter(pairs)
    except (query.InvalidQuery, ValueError) as error:
        raise AlertError(str(error)) from None


def describe(rule):
    """The rule in words, as notifications and `alert list` say it."""
    if rule.kind == "absence":
        return "no log matching %s within %d minutes" % (rule.search.query or "anything", rule.window_minutes)
    return "at least %d log%s matching %s within %d minutes" % (
        rule.threshold, "" if rule.threshold == 1 else "s", rule.search.query or "anything", rule.window_minutes)


def save_search(project, name, text):
    """Save a named search of the project; raises AlertError if the name or query cannot be used."""
    problem = project.name_problem(name)
    if problem:
        raise AlertError(problem.replace("project", "saved search"))
    search_filter(text)
    with database.atomic():
        if SavedSearch.select().where(SavedSearch.project == project, SavedSearch.name == name).exists():
            raise NameTaken("project %s already has a saved search named %s" % (project.name, name))
        return SavedSearch.create(project=project, name=name, query=text)


def find_search(project, name):
    """The project's saved search of this name; None if there is none."""
    return SavedSearch.get_or_none(SavedSearch.project == project, SavedSearch.name == name)


def add_rule(search, kind, window_minutes, channel, target, settings, threshold=None, repeat_minutes=None):
    """Add the alert rule of a saved search; returns (rule, the webhook's signing secret or None, shown once)."""
    if kind not in KINDS:
        raise AlertError("the rule must be a threshold or an absence")
    if not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
        raise AlertError("the window must be 1 to %d minutes" % MAX_WINDOW_MINUTES)
    if kind == "threshold" and not (threshold and threshold >= 1):
        raise AlertError("a threshold must be 1 or more")
    if repeat_minutes is not None and repeat_minutes < 1:
        raise AlertError("the repeat interval must be 1 minute or more")
    try:
        notify.check_target(channel, target, settings.allow_private_webhooks)
    except notify.Refused as error:
        raise AlertError(str(error)) from None
    secret = "whsec_" + secrets.token_urlsafe(32) if channel == "webhook" else None
    with database.atomic():
        if AlertRule.select().where(AlertRule.search == search).exists():
            raise AlertError("the saved search %s has an alert already" % search.name)
        rule = AlertRule.create(search=search, kind=kind, threshold=threshold if kind == "threshold" else None,
                                window_minutes=window_minutes, channel=channel, target=target.strip(),
                                secret=secret, repeat_minutes=repeat_minutes, due_at=next_minute(utcnow()))
    return rule, secret


def find_rule(project, name):
    """The project's rule of this name, with its saved search; None if there is none."""
    return (AlertRule.select(AlertRule, SavedSearch).join(SavedSearch)
            .where(SavedSearch.project == project, SavedSearch.name == name).first())


def rules(project=None):
    """Every rule (of one project), with its saved search and project, by project and name."""
    selected = AlertRule.select(AlertRule, SavedSearch).join(SavedSearch)
    if project is not None:
        selected = selected.where(SavedSearch.project == project)
    return selected.order_by(SavedSearch.project, SavedSearch.name)


def next_minute(now):
    """The start of the minute after now: when a rule evaluated now is due again."""
    return now.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)


def claim(rule, now):
    """Take this minute's evaluation of the rule; False if another consumer took it first."""
    moved = (AlertRule.update(due_at=next_minute(now))
             .where(AlertRule.id == rule.id, AlertRule.due_at == rule.due_at).execute())
    return moved == 1


def evaluate_due(settings, lag_seconds=0.0, now=None, replica_lag_seconds=0.0):
    """Evaluate every rule whose minute has come and that no other consumer took; returns the notification ids made.

    Rules of a deactivated project wait: it sends no logs, and its absence rules would only fire for that.
    The window moves back by both lags; with the read replica too far behind
    (models.replica_lag_seconds; None: by an unknown time) no rule is counted,
    and each evaluation says why.
    """
    behind = replica_behind(replica_lag_seconds)
    made = []
    for rule in list(AlertRule.select(AlertRule, SavedSearch, Project).join(SavedSearch).join(Project)
                     .where(AlertRule.due_at <= (now or utcnow()), Project.is_active == True)  # noqa: E712 (SQL)
                     .order_by(AlertRule.due_at)):
        # Each rule at its own time: after a slow pass, a rule claimed late is not due again at once.
        at = now or utcnow()
        if not claim(rule, at):
            continue
        if behind:
            note_failure(rule, at, behind)
            continue
        try:
            made += evaluate(rule, settings, at, lag_seconds + replica_lag_seconds)
        except Exception as error:  # one rule's failure must not keep the others from their minute
            logger.exception("alert %s (rule %d) could not be evaluated; next try in a minute",
                             rule.search.name, rule.id)
            note_failure(rule, at, error)
    return made


def replica_behind(lag_seconds):
    """Why the read replica's counts cannot be used this minute, or None when they can.

    lag_seconds is models.replica_lag_seconds()'s answer, or the error it raised (tasks.replica_lag).
    """
    if isinstance(lag_seconds, Exception):
        return "the read replica does not answer: %s" % (str(lag_seconds).strip().split("\n")[0] or type(lag_seconds).__name__)
    if lag_seconds is None:
        return "the read replica has not replayed its primary's latest changes, and replayed no transaction to tell since when"
    if lag_seconds > MAX_REPLICA_LAG_SECONDS:
        return "the read replica is %d s behind its primary (more than %d s); not counted" % (
            lag_seconds, MAX_REPLICA_LAG_SECONDS)
    return None


def note_failure(rule, at, error):
    """Record that the rule was not evaluated at `at`, and why, its state unchanged: the viewer and `alert list` show it.

    A count that failed (the read replica down, say) is no count of 0: an
    absence rule must not fire on it. The rule is tried again the next minute.
    """
    reason = str(error).strip().split("\n")[0] or type(error).__name__
    try:
        with using_primary():
            AlertEvaluation.create(rule=rule, at=at, count=None, state=rule.state,
                                   note="not evaluated: %s" % reason[:500])
    except peewee.PeeweeException as failure:  # the primary itself may be what failed
        logger.error("alert %s (rule %d): its failed evaluation could not be recorded either: %s",
                     rule.search.name, rule.id, failure)


def counting_cap(rule):
    """The most logs a rule's evaluation counts: past it, whether the rule fires is known."""
    return 1 if rule.kind == "absence" else max(rule.threshold, COUNT_CAP)


def count_matching(rule, log_filter, settings):
    """The logs the rule's search matches in the filter's window, counted up to counting_cap(rule).

    A level-only search reads the per-minute counts the database writer keeps
    (models.LogCount), and the rows only at the window's part-minute edges: a
    day of a busy project is a sum of 1,440 numbers, not a count of millions of
    rows. Other searches count rows: short windows stop at the cap (an absence
    rule only asks whether one log exists), longer ones keep per-minute counts
    of their own (count_rows). Each runs as a read does (query.time_limited:
    no JIT, the read timeout), so a rule cannot hold the database for long,
    on the read replica when there is one.
    """
    with using_replica(), query.time_limited(settings.read_timeout_seconds):
        if on_postgres():
            # Every count here reads a few minutes of one project through its (project_id, timestamp)
            # index. After a burst into another project, ANALYZE's statistics put a million rows in
            # those minutes, and the planner then scanned the whole table for each rule: a pass of
            # 100 rules took 80 s (bench/alerts.py). Transaction-local, as time_limited's settings.
            database.execute_sql("SELECT set_config('enable_seqscan', 'off', true)")
        if not (log_filter.text or log_filter.metadata or log_filter.excluded_metadata):
            step = rule.window_minutes * query.ROLLUP_STEP
            total = sum(number for _, _, number in query.bucket_counts(
                rule.search.project_id, log_filter, query.micros(log_filter.since), step))
            return min(total, counting_cap(rule))
        return min(count_rows(rule, log_filter), counting_cap(rule))


def capped_count(rule, log_filter):
    """The rule's matching rows in the filter's range, counted up to counting_cap(rule)."""
    matching = query.matching(rule.search.project_id, log_filter)
    return matching.select(SQL("1")).limit(counting_cap(rule)).count()


def count_rows(rule, log_filter):
    """The rule's matching rows in its window: rows for its last minutes, stored per-minute counts for the rest.

    A minute's count is stored once the minute is RECOUNT_MINUTES old, and
    read from then on, so a day-long window costs each minute what a few
    minutes of rows do instead of a day of them (a rare word or value is looked
    for through every row). The last minutes are counted again each time: the
    logs written late (a shipper's retry, a queue behind) land there. A log
    stored more than RECOUNT_MINUTES after its timestamp is not counted by
    windows that reach past those minutes. Short windows count rows, as before.
    """
    since, until = log_filter.since, log_filter.until
    first = query.micros(since) // query.ROLLUP_STEP + (1 if query.micros(since) % query.ROLLUP_STEP else 0)
    settled = query.micros(until) // query.ROLLUP_STEP - RECOUNT_MINUTES
    if settled - first < 1:
        return capped_count(rule, log_filter)
    # The rule's own minutes are the primary's (the logs may be read from a replica).
    with using_primary():
        stored = dict(AlertMinute.select(AlertMinute.minute, AlertMinute.count).where(
            AlertMinute.rule == rule, AlertMinute.minute >= first, AlertMinute.minute < settled).tuples())
    missing = [minute for minute in range(first, settled) if minute not in stored]
    if missing:
        start = missing[0]
        counted = dict.fromkeys(range(start, settled), 0)
        for index, _, number in query.counted_rows(rule.search.project_id, log_filter.replace(
                since=minute_time(start), until=minute_time(settled)), start * query.ROLLUP_STEP, query.ROLLUP_STEP):
            counted[start + int(index)] += number
        stored.update(counted)
        rows = [{"rule": rule.id, "minute": minute, "count": number} for minute, number in counted.items()]
        with using_primary():
            for offset in range(0, len(rows), 300):
                (AlertMinute.insert_many(rows[offset:offset + 300])
                 .on_conflict(conflict_target=[AlertMinute.rule, AlertMinute.minute],
                              update={AlertMinute.count: EXCLUDED.count}).execute())
    with using_primary():
        AlertMinute.delete().where(AlertMinute.rule == rule, AlertMinute.minute < first).execute()
    edges = sum(query.matching(rule.search.project_id, log_filter.replace(since=low, until=high)).count()
                for low, high in ((since, minute_time(first)), (minute_time(settled), until)) if low < high)
    return sum(stored.values()) + edges


def minute_time(minute):
    """The naive UTC datetime of a minute since the epoch."""
    return query.EPOCH + datetime.timedelta(minutes=minute)


def evaluate(rule, settings, now, lag_seconds=0.0):
    """Count the rule's logs in its window, move its state, and record what to notify; returns notification ids.

    The window ends `lag_seconds` before now when the database writer's queue
    (and the read replica) is that far behind: records still queued must not
    make an absence rule fire, nor a firing rule resolve.
    """
    until = now - datetime.timedelta(seconds=lag_seconds)
    since = until - datetime.timedelta(minutes=rule.window_minutes)
    log_filter = search_filter(rule.search.query).replace(since=since, until=until)
    count = count_matching(rule, log_filter, settings)
    firing = count == 0 if rule.kind == "absence" else count >= rule.threshold
    event = None
    if firing and rule.state != "firing":
        event = "firing"
    elif not firing and rule.state == "firing":
        event = "resolved"
    elif firing and rule.repeat_minutes and (
            rule.notified_at is None or now - rule.notified_at >= datetime.timedelta(minutes=rule.repeat_minutes)):
        event = "firing"
    note = ("the stored logs are %d s behind (the database writer's queue, the read replica); window moved back"
            % lag_seconds if lag_seconds >= 1 else "")
    made = []
    samples = sample_logs(rule, event, count, log_filter, settings) if event else []
    with durable_transaction():
        changes = {"evaluated_at": now, "last_count": count}
        if event:
            changes.update(state="firing" if event == "firing" else "ok", notified_at=now)
            if (event == "firing") != (rule.state == "firing"):
                changes["changed_at"] = now
            made.append(record(rule, event, count, since, until, samples, settings, now))
        AlertRule.update(**changes).where(AlertRule.id == rule.id).execute()
        AlertEvaluation.create(rule=rule, at=now, count=count, state="firing" if firing else "ok", note=note)
        AlertEvaluation.delete().where(AlertEvaluation.rule == rule,
                                       AlertEvaluation.at < now - EVALUATIONS_KEPT).execute()
    if event:
        logger.info("alert %s of project %s is %s: %d logs in %d minutes", rule.search.name,
                    rule.search.project.name, event, count, rule.window_minutes)
    return made


def viewer_url(settings, project_name, text, since, until):
    """The viewer's page showing exactly the logs a window of the rule counted."""
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True) + [
        ("since", since.strftime("%Y-%m-%dT%H:%M:%SZ")), ("until", until.strftime("%Y-%m-%dT%H:%M:%SZ"))]
    return "%s/ui/projects/%s?%s" % (settings.public_url.rstrip("/"), urllib.parse.quote(project_name, safe=""),
                                     urllib.parse.urlencode(pairs))


def payload(rule, notification_id, event, count, since, until, samples, settings):
    """The notification as the webhook's JSON body (the other channels render the same fields)."""
    return {"id": notification_id, "alert": rule.search.name, "project": rule.search.project.name,
            "state": event, "rule": describe(rule), "kind": rule.kind, "threshold": rule.threshold,
            "count": count, "count_capped": count >= counting_cap(rule),
            "window_minutes": rule.window_minutes,
            "since": records.format_time(since), "until": records.format_time(until),
            "samples": samples, "url": viewer_url(settings, rule.search.project.name, rule.search.query, since, until)}


def sample_logs(rule, event, count, log_filter, settings):
    """The newest logs a notification of the event carries, as the API renders them; none when it resolves.

    Read before the transaction that records the notification, as the count
    is (on the read replica, time-limited): the primary's transaction is not
    held open meanwhile.
    """
    if event == "resolved" or not count:
        return []
    with using_replica(), query.time_limited(settings.read_timeout_seconds):
        rows, _ = query.fetch(rule.search.project_id, log_filter.replace(limit=SAMPLES, order="desc"))
    return [query.render(row) for row in rows[:SAMPLES]]


def record(rule, event, count, since, until, samples, settings, now):
    """Store a notification to send (inside the caller's transaction); returns its id."""
    notification_id = str(uuid.uuid4())
    body = orjson.dumps(payload(rule, notification_id, event, count, since, until, samples, settings))
    Notification.create(id=notification_id, rule=rule, event=event, body=body.decode(), created_at=now, due_at=now)
    return notification_id


def record_test(rule, settings):
    """Store a test notification for the rule (the last window's count, state "test"); returns its id."""
    now = utcnow()
    since = now - datetime.timedelta(minutes=rule.window_minutes)
    log_filter = search_filter(rule.search.query).replace(since=since, until=now)
    count = count_matching(rule, log_filter, settings)
    samples = sample_logs(rule, "test", count, log_filter, settings)
    with durable_transaction():
        return record(rule, "test", count, since, now, samples, settings, now)


def due_notifications(now=None, limit=100):
    """Ids of notifications waiting to be sent whose time has come and that no consumer holds."""
    now = now or utcnow()
    return [str(n.id) for n in Notification.select(Notification.id).where(due_and_free(now))
            .order_by(Notification.due_at).limit(limit)]


def due_and_free(now):
    """The condition of a notification to send now: not sent, not given up, due, and no consumer's lease on it."""
    return (Notification.sent_at.is_null() & Notification.failed_at.is_null() & (Notification.due_at <= now)
            & (Notification.leased_until.is_null() | (Notification.leased_until < now)))


def lease(notification_id, settings, now):
    """Take the notification for one attempt; None if it is sent, given up, or another consumer holds it."""
    held_until = now + datetime.timedelta(seconds=settings.notify_timeout_seconds * LEASE_TIMEOUTS + LEASE_MARGIN_SECONDS)
    taken = (Notification.update(leased_until=held_until, attempts=Notification.attempts + 1)
             .where(Notification.id == notification_id, due_and_free(now)).execute())
    if taken != 1:
        return None
    return (Notification.select(Notification, AlertRule, SavedSearch).join(AlertRule).join(SavedSearch)
            .where(Notification.id == notification_id).first())


def retry_delay(attempts, settings, asked=None):
    """Seconds before the next attempt: doubling from 5 s, capped at 10 minutes, or what the receiver asked."""
    delay = min(5 * 2 ** (attempts - 1), 600)
    return min(max(delay, asked), 3600) if asked is not None else delay


def deliver(notification_id, settings, counters=None):
    """Send one notification if it is due and free: at least once, retried with backoff until given up.

    Returns "sent", "retry", "failed" or None (not taken). `counters`, when
    given, is the spool's add_counters, for /metrics.
    """
    now = utcnow()
    notification = lease(notification_id, settings, now)
    if notification is None:
        return None
    rule = notification.rule
    try:
        notify.send(rule, notification_id, notification.body.encode(), settings)
    except (notify.DeliveryFailed, notify.Refused) as error:
        retry = isinstance(error, notify.DeliveryFailed) and error.retry
        given_up = now - notification.created_at >= datetime.timedelta(seconds=settings.notify_give_up_seconds)
        outcome = "retry" if retry and not given_up else "failed"
        message = "%s (attempt %d)" % (error, notification.attempts)
        changes = {"leased_until": None, "last_error": message}
        if outcome == "failed":
            changes["failed_at"] = utcnow()
        else:
            asked = getattr(error, "retry_after", None)
            changes["due_at"] = utcnow() + datetime.timedelta(
                seconds=retry_delay(notification.attempts, settings, asked))
        with database.atomic():
            Notification.update(**changes).where(Notification.id == notification_id).execute()
            AlertRule.update(last_error=message).where(AlertRule.id == rule.id).execute()
        (logger.warning if outcome == "retry" else logger.error)(
            "alert %s: %s notification %s not delivered by %s: %s; %s", rule.search.name, notification.event,
            notification_id, rule.channel, message, "will retry" if outcome == "retry" else "given up")
        if counters:
            counters([(metrics.counter("notifications_failed", channel=rule.channel), 1)])
        return outcome
    with database.atomic():
        Notification.update(sent_at=utcnow(), leased_until=None, last_error=None).where(
            Notification.id == notification_id).execute()
        AlertRule.update(last_error=None).where(AlertRule.id == rule.id).execute()
    logger.info("alert %s: %s notification %s delivered by %s", rule.search.name, notification.event,
                notification_id, rule.channel)
    if counters:
        counters([(metrics.counter("notifications_sent", channel=rule.channel), 1)])
    return "sent"


def history(rule, limit=10):
    """The rule's last evaluations and notifications, newest first."""
    evaluations = list(rule.evaluations.order_by(AlertEvaluation.at.desc()).limit(limit))
    notifications = list(rule.notifications.order_by(Notification.created_at.desc()).limit(limit))
    return evaluations, notifications

