"""The viewer's saved searches and alerts: what their forms mean, and what their pages show of a rule.

viewer.py holds the routes (who may see what, CSRF, where to go next); this
module turns the forms into alerts.py's calls and a rule into the facts its
pages show. Everything shown here comes from people and receivers: the
templates put it in the page as text.
"""
import datetime
import urllib.parse

import alerts
import models
import records

# What "Save search" keeps of the explore page's query string: its filters. The time range,
# live and the cursor belong to the view, and an alert's window replaces them.
BLANK_DROPPED = ("q", "level", "min_level")
# Parameters of one explore URL at most: far above MAX_METADATA_FILTERS.
MAX_PARAMETERS = 200


def is_saved(name):
    """True for a parameter a saved search keeps: q, level, min_level, meta.<path> (and meta.<path>!)."""
    return name in alerts.FILTER_PARAMETERS or name.startswith("meta.")


def search_query(text):
    """The filters of an explore page's query string, in their order; raises AlertError for an unreadable one."""
    try:
        pairs = urllib.parse.parse_qsl(text.removeprefix("?"), keep_blank_values=True, max_num_fields=MAX_PARAMETERS)
    except ValueError:
        raise alerts.AlertError("the view has more than %d parameters" % MAX_PARAMETERS) from None
    return urllib.parse.urlencode([(name, value) for name, value in pairs
                                   if is_saved(name) and (value.strip() or name not in BLANK_DROPPED)])


def searches(project):
    """The project's saved searches by name, each with its rule (None without one)."""
    found = list(models.SavedSearch.select().where(models.SavedSearch.project == project)
                 .order_by(models.SavedSearch.name))
    rules = {rule.search_id: rule for rule in models.AlertRule.select().where(
        models.AlertRule.search.in_([search.id for search in found]))} if found else {}
    return [(search, rules.get(search.id)) for search in found]


def find_search(project, search_id):
    """The project's saved search of this id; None for another project's or an unknown one."""
    return models.SavedSearch.get_or_none(models.SavedSearch.id == search_id, models.SavedSearch.project == project)


def chosen_search(project, text):
    """The saved search the alert form chose, by its id; AlertError if it is none of the project's."""
    search = find_search(project, int(text)) if text.isascii() and text.isdigit() and len(text) <= 18 else None
    if search is None:
        raise alerts.AlertError("choose one of the project's saved searches")
    return search


def find_rule(project, rule_id):
    """The project's rule of this id, with its saved search; None for another project's or an unknown one."""
    return (models.AlertRule.select(models.AlertRule, models.SavedSearch).join(models.SavedSearch)
            .where(models.AlertRule.id == rule_id, models.SavedSearch.project == project).first())


def whole_number(form, field, label, required=True):
    """A form field holding a whole number; None when left empty and not required; AlertError otherwise."""
    text = form.get(field, "").strip()
    if not text:
        if required:
            raise alerts.AlertError("%s is missing" % label)
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise alerts.AlertError("%s must be a whole number of at most 9 digits, not %r" % (label, text[:20]))
    return int(text)


def add_rule(search, form, settings):
    """Add the rule the alert form describes to the saved search; returns (rule, the webhook's secret or None)."""
    kind = form.get("kind", "")
    return alerts.add_rule(
        search, kind, whole_number(form, "window", "the window"), form.get("channel", ""), form.get("target", ""),
        settings, threshold=whole_number(form, "threshold", "the threshold") if kind == "threshold" else None,
        repeat_minutes=whole_number(form, "repeat", "the repeat interval", required=False))


def remove_rule(rule):
    """Remove a rule with its evaluations and notifications; its saved search stays."""
    with models.database.atomic():
        rule.delete_instance(recursive=True)


def delete_search(search):
    """Delete a saved search, and its rule with its history if it has one."""
    with models.database.atomic():
        search.delete_instance(recursive=True)


def destination(rule):
    """Where a rule notifies, as its pages show it: the address, or the URL up to its host.

    A URL's path and query may be its key (a Slack webhook's path is), which
    everyone who may read the project would see.
    """
    if rule.channel == "email":
        return rule.target
    parts = urllib.parse.urlsplit(rule.target)
    return "%s://%s%s" % (parts.scheme, parts.netloc, "/…" if parts.path.strip("/") or parts.query else "")


def delivery(notification, now):
    """A notification's state in the rule's history: "sent", "failed" (given up), "sending" or "pending"."""
    if notification.sent_at:
        return "sent"
    if notification.failed_at:
        return "failed"
    if notification.leased_until and notification.leased_until > now:
        return "sending"
    return "pending"


def query_string(text, extra=()):
    """A saved query (or a view's) as a URL's query string, "?..." or "", encoded again: the API stores it as sent."""
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True) + list(extra)
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def window_query(rule, at):
    """The explore page's query string for the logs an evaluation counted: the search, in the window ending at `at`."""
    since = at - datetime.timedelta(minutes=rule.window_minutes)
    return query_string(rule.search.query, [("since", records.format_time(since)), ("until", records.format_time(at))])
