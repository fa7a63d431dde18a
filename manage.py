"""LogFlow's command line: projects, their API keys, the viewer's users, alerts, and quarantined records."""
import datetime
import getpass
import sys
import time

import click
import orjson
import peewee

import alerts
import config
import models
import query
import records
import spool
import tasks
from models import ApiKey, Grant, Log, Project, Quarantined, Session, User


def escape(text):
    """Text with each control character shown as an escape (ESC as \\x1b, CR as \\r, U+202E as \\u202e), for a terminal to print, not obey."""
    return models.CONTROL_CHARACTERS.sub(lambda match: shown_as(match.group()), text)


def shown_as(character):
    # \uXXXX above C0, so that escaped JSON (tail's metadata, quarantine show) stays JSON.
    code = ord(character)
    return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(character) or (
        "\\x%02x" % code if code < 0x20 else "\\u%04x" % code)


def fail(message):
    """Print an error to stderr and exit non-zero."""
    click.echo("error: %s" % escape(message), err=True)
    sys.exit(1)


def find_project(name_or_id):
    """The project an argument means: all ASCII digits are an id, anything else a name; exits if there is none."""
    project = Project.lookup(name_or_id)
    if project is not None:
        return project
    if not models.is_id(name_or_id):
        fail("no project named %r" % name_or_id)
    named = Project.get_or_none(Project.name == name_or_id)
    if named is not None:
        # Names that are numbers were allowed before; such a project answers to its id only.
        fail("no project with id %s; the project named %r has id %d: a number names an id, so give %d"
             % (name_or_id, named.name, named.id, named.id))
    fail("no project with id %s (a number names a project's id)" % name_or_id)


def outdate_lookups(done):
    """After a change to a key or project is committed: web processes no longer trust earlier lookups, even during a database outage."""
    try:
        tasks.runtime.spool.advance(spool.KEY_EPOCH)
    except spool.SpoolUnavailable as error:
        fail("%s in the database, but the queue's store could not be told (%s): during a database outage,"
             " web processes may go on trusting their earlier lookups of keys for up to an hour;"
             " run this command again once the store answers" % (done, error))


def storage_option(value):
    if value is None:
        return None
    try:
        return ",".join(config.parse_storage(value))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def database_problem(error, command):
    """One line naming what the database refused or why it cannot be reached."""
    # PostgreSQL's first line says it; the rest repeats the SQL or adds a hint.
    reason = str(error).strip().split("\n")[0].strip() or type(error).__name__
    if isinstance(error, (peewee.OperationalError, peewee.InterfaceError)):
        return "the database is unavailable: %s" % reason
    if command == "init-db":  # the hint below would send the user back here
        return "the database refused: %s" % reason
    return "the database refused: %s (if a table or column is missing: python manage.py init-db)" % reason


class DatabaseCommand(click.Command):
    """A command on the stores, bound to the environment's settings (in dev mode its tables are made first).

    A bad setting, or a database or queue failure, is one line of error.
    """

    def invoke(self, ctx):
        # Here, not in the group's callback, so that --help, which exits while
        # the arguments are parsed, never reads the settings or touches the database.
        try:
            settings = config.load()
            tasks.configure(settings)
            if not settings.database_url:
                # Dev mode has no set-up step (as in create_app); PostgreSQL gets init-db.
                models.create_tables()
            return super().invoke(ctx)
        except config.InvalidSetting as error:
            fail(str(error))
        except (peewee.OperationalError, peewee.InterfaceError, peewee.ProgrammingError,
                peewee.DataError, peewee.IntegrityError) as error:
            fail(database_problem(error, self.name))
        except spool.SpoolUnavailable as error:
            fail("the queue is unavailable: %s" % error)


class CommandLine(click.Group):
    """A group whose commands, and its subgroups' commands, are DatabaseCommands."""

    command_class = DatabaseCommand
    group_class = type


@click.group(cls=CommandLine)
def cli():
    """Manage LogFlow's projects, API keys, viewer users and quarantine (settings come from the environment and .env)."""


@cli.command("init-db")
def init_db():
    """Create the database tables that are missing and add the columns a new version needs (safe to run again)."""
    models.create_tables()
    click.echo("database ready")


@cli.command("add-project")
@click.argument("name")
@click.option("--storage", callback=lambda ctx, param, value: storage_option(value),
              help="Writers for this project: db, file or db,file (default: LOGFLOW_STORAGE).")
def add_project(name, storage):
    """Create a project and print its first API key (shown only this once); a name cannot be a number, which means an id."""
    problem = Project.name_problem(name)
    if problem:
        fail("%s: %r" % (problem, name))
    if Project.get_or_none(Project.name == name):
        fail("a project named %r already exists" % name)
    with models.database.atomic():
        project = Project.create(name=name, storage=storage)
        key = ApiKey.issue(project)
    click.echo("project %s created (id %d)" % (escape(name), project.id), err=True)
    click.echo("API key (shown once, store it now):", err=True)
    click.echo(key)


class CountOrDefault(click.ParamType):
    """A whole number of 0 or more, or "default" (None): a project's own setting or the environment's."""

    name = "N|default"

    def __init__(self, maximum=2**31 - 1):
        # By default, what the projects table's integer columns hold on PostgreSQL.
        self.maximum = maximum

    def convert(self, value, param, ctx):
        if value == "default":
            return None
        if not (value.isascii() and value.isdigit()):  # "²" is a digit too, but not a number int() reads
            self.fail("%r is not a whole number, 0 or \"default\"" % value, param, ctx)
        if len(value.lstrip("0")) > 10 or int(value) > self.maximum:  # length first: int() of 4,300 digits raises
            self.fail("%s is more than %d" % (value[:20], self.maximum), param, ctx)
        return int(value)


@cli.command("set-rate-limit")
@click.argument("project")
@click.argument("rate", metavar="RECORDS_PER_SECOND", type=CountOrDefault())
def set_rate_limit(project, rate):
    """Limit a project to RECORDS_PER_SECOND (0: no limit; "default": LOGFLOW_RATE_LIMIT); applied within LOGFLOW_KEY_CACHE_SECONDS."""
    project = find_project(project)
    project.rate_limit = rate
    project.save()
    outdate_lookups("the rate limit is set")
    effective = tasks.runtime.settings.rate_limit if rate is None else rate
    click.echo("project %s: %s%s" % (escape(project.name), "%d records per second" % effective if effective
                                     else "no rate limit", " (the default)" if rate is None else ""))


@cli.command("set-retention")
@click.argument("project")
@click.argument("days", type=CountOrDefault(config.MAX_RETENTION_DAYS))
def set_retention(project, days):
    """Keep a project's logs DAYS days (0: forever; "default": LOGFLOW_RETENTION_DAYS); applied at the next prune."""
    project = find_project(project)
    project.retention_days = days
    project.save()
    outdate_lookups("the retention is set")
    kept = project.retention(tasks.runtime.settings.retention_days)
    click.echo("project %s: %s%s" % (escape(project.name), "%d days" % kept if kept else "kept forever",
                                     " (the default)" if days is None else ""))


@cli.command("list-projects")
def list_projects():
    """List projects: id, name, active, storage, rate limit, and the prefixes of their live keys."""
    rows = []  # read whole before the header, so that a failed read prints no table
    for project in Project.select().order_by(Project.id):
        prefixes = [key.prefix + "…" + ("(read)" if key.scope == "read" else "")
                    for key in project.keys.where(ApiKey.revoked_at.is_null())]
        rate = "default" if project.rate_limit is None else str(project.rate_limit or "none")
        rows.append((project.id, escape(project.name), "yes" if project.is_active else "no",
                     escape(project.storage or "default"), rate, escape(" ".join(prefixes) or "-")))
    click.echo("%-4s %-24s %-7s %-8s %-8s %s" % ("id", "name", "active", "storage", "rate/s", "keys"))
    for row in rows:
        click.echo("%-4d %-24s %-7s %-8s %-8s %s" % row)


@cli.command("create-key")
@click.argument("project")
@click.option("--scope", type=click.Choice(["ingest", "read"]), default="ingest", show_default=True,
              help="ingest: may only POST logs; read: may only read the project's logs (GET /logs).")
def create_key(project, scope):
    """Create another API key for a project (for rotation, or to read its logs) and print it once."""
    key = ApiKey.issue(find_project(project), scope=scope)
    click.echo("API key (shown once, store it now):", err=True)
    click.echo(key)


@cli.command("revoke-key")
@click.argument("prefix")
def revoke_key(prefix):
    """Revoke the live key whose prefix is given (as list-projects shows it)."""
    # A longer text (a whole key, say) is matched by the part that is stored.
    prefix = prefix.rstrip("…")[:models.SHOWN_PREFIX_LENGTH]
    keys = list(ApiKey.select().where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_null()))
    if not keys:
        if ApiKey.select().where(ApiKey.prefix == prefix).exists():
            # Run again after the store was unreachable (outdate_lookups): finish the job.
            outdate_lookups("the key was revoked")
            click.echo("%s… was revoked already; no web process trusts an earlier lookup of it" % escape(prefix))
            return
        fail("no live key with prefix %r (give the whole prefix list-projects shows)" % prefix)
    if len(keys) > 1:
        fail("%d live keys share prefix %r; none was revoked" % (len(keys), prefix))
    keys[0].revoked_at = models.utcnow()
    keys[0].save()
    outdate_lookups("the key is revoked")
    click.echo("revoked %s…; web processes refuse it within LOGFLOW_KEY_CACHE_SECONDS" % escape(prefix))


def set_active(project, active):
    project = find_project(project)
    project.is_active = active
    project.save()
    outdate_lookups("the project is %s" % ("activated" if active else "deactivated"))
    click.echo("project %s %s" % (escape(project.name), "activated" if active else "deactivated"))


@cli.command()
@click.argument("project")
def deactivate(project):
    """Refuse the project's records (403) until it is activated again."""
    set_active(project, False)


@cli.command()
@click.argument("project")
def activate(project):
    """Accept the project's records again."""
    set_active(project, True)


# Shorter passwords are refused: the sign-in throttle slows guessing, it cannot make a short password safe.
MIN_PASSWORD_LENGTH = 8


def read_password(from_stdin):
    """A new password: the first line of standard input, or typed twice at the terminal, never echoed."""
    if from_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    elif not sys.stdin.isatty():
        fail("no terminal to ask for the password on: give it on standard input with --password-stdin")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            fail("the two passwords differ; nothing was changed")
    if len(password) < MIN_PASSWORD_LENGTH:
        fail("a password needs at least %d characters; nothing was changed" % MIN_PASSWORD_LENGTH)
    return password


def find_user(name):
    """The user of this name; exits if there is none."""
    user = User.get_or_none(User.name == name)
    if user is None:
        fail("no user named %r" % name)
    return user


def readable(user):
    """The projects a user may read, as list-users and create-user show them."""
    if user.all_projects:
        return "all projects"
    return ", ".join(escape(project.name) for project in user.readable_projects()) or "none"


@cli.command("create-user")
@click.argument("name")
@click.option("--project", "projects", multiple=True, help="A project the user may read (name or id); repeat it for more.")
@click.option("--all-projects", is_flag=True, help="The user may read every project, those created later too.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input's first line, not the terminal.")
def create_user(name, projects, all_projects, password_stdin):
    """Create a person who may sign in to the viewer (/ui/) and read these projects' logs."""
    if bool(projects) == all_projects:
        fail("give --project P (once per project) or --all-projects")
    problem = models.name_problem(name, "user")
    if problem:
        fail(problem)
    if User.get_or_none(User.name == name) is not None:
        fail("a user named %r exists already (set-password changes a password)" % name)
    grants = {project.id: project for project in map(find_project, projects)}
    user = User(name=name, all_projects=all_projects)
    user.set_password(read_password(password_stdin))
    with models.database.atomic():
        user.save()
        for project in grants.values():
            Grant.create(user=user, project=project)
    click.echo("user %s may read %s" % (escape(name), readable(user)))


@cli.command("list-users")
def list_users():
    """List the viewer's users: name, sessions signed in now, and the projects they may read."""
    rows = [(escape(user.name), Session.live().where(Session.user == user).count(), readable(user))
            for user in User.select().order_by(User.name)]
    click.echo("%-24s %-8s %s" % ("name", "sessions", "projects"))
    for row in rows:
        click.echo("%-24s %-8d %s" % row)


@cli.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input's first line, not the terminal.")
def set_password(name, password_stdin):
    """Change a user's password; every browser signed in as them is signed out."""
    user = find_user(name)
    user.set_password(read_password(password_stdin))
    with models.database.atomic():
        user.save()
        ended = Session.end_all(user)
    click.echo("password of %s changed; %d session%s ended" % (escape(user.name), ended, "" if ended == 1 else "s"))


@cli.command("remove-user")
@click.argument("name")
def remove_user(name):
    """Remove a user; every browser signed in as them is signed out at its next page."""
    user = find_user(name)
    with models.database.atomic():
        ended = Session.end_all(user)
        user.delete_instance(recursive=True)
    click.echo("removed user %s; %d session%s ended" % (escape(user.name), ended, "" if ended == 1 else "s"))


@cli.group()
def quarantine():
    """Records a writer could not store: list, show, replay or purge them."""


def quarantined(entry_id, everything):
    """The entries a command acts on: one by id, or all with --all."""
    if everything == (entry_id is not None):
        fail("give one quarantine id or --all")
    query = Quarantined.select().order_by(Quarantined.id)
    if entry_id is not None:
        query = query.where(Quarantined.id == entry_id)
        if not query.exists():
            fail("no quarantined record %d" % entry_id)
    return list(query)


@quarantine.command("list")
@click.option("--limit", default=50, show_default=True, help="Show at most this many, oldest first.")
def quarantine_list(limit):
    """List quarantined records: id, writer, project, when, and why."""
    total = Quarantined.select().count()
    click.echo("%d quarantined record%s" % (total, "" if total == 1 else "s"))
    for entry in Quarantined.select().order_by(Quarantined.id).limit(limit):
        click.echo("%-6d %-5s project %-5d %s  %s" % (
            entry.id, escape(entry.writer), entry.project, entry.quarantined_at.isoformat(timespec="seconds"),
            escape(entry.error.splitlines()[0][:100]) if entry.error else ""))


@quarantine.command("show")
@click.argument("entry_id", type=int)
def quarantine_show(entry_id):
    """Print one quarantined record in full, with its error."""
    [entry] = quarantined(entry_id, False)
    shown = orjson.dumps({
        "id": entry.id, "writer": entry.writer, "project": entry.project,
        "received_at": entry.received_at, "quarantined_at": entry.quarantined_at.isoformat(),
        "error": entry.error, "record": orjson.loads(entry.record)}, option=orjson.OPT_INDENT_2).decode()
    # JSON escapes C0 characters within strings, so each newline left is the layout's own.
    click.echo("\n".join(escape(line) for line in shown.split("\n")))


@quarantine.command("replay")
@click.argument("entry_id", type=int, required=False)
@click.option("--all", "everything", is_flag=True, help="Replay every quarantined record.")
def quarantine_replay(entry_id, everything):
    """Queue quarantined records for their writer again (after fixing the cause) and remove them here."""
    entries = quarantined(entry_id, everything)
    for entry in entries:
        # Queued first, removed second: a crash in between repeats, never loses.
        payload = spool.encode(entry.project, entry.received_at, [orjson.loads(entry.record)])
        for writer, shard in tasks.runtime.spool.push(payload, [entry.writer], 1):
            tasks.drain(writer, **tasks.of_shard(shard))
        entry.delete_instance()
    click.echo("replayed %d record%s" % (len(entries), "" if len(entries) == 1 else "s"))


@quarantine.command("purge")
@click.argument("entry_id", type=int, required=False)
@click.option("--all", "everything", is_flag=True, help="Delete every quarantined record.")
def quarantine_purge(entry_id, everything):
    """Delete quarantined records for good."""
    entries = quarantined(entry_id, everything)
    Quarantined.delete().where(Quarantined.id.in_([entry.id for entry in entries])).execute()
    click.echo("purged %d record%s" % (len(entries), "" if len(entries) == 1 else "s"))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would be removed and compressed; change nothing.")
def prune(dry_run):
    """Apply every project's retention now (as the consumers do hourly): expired rows and files go, past days' files are gzipped."""
    delete, compress = ("would delete", "would compress") if dry_run else ("deleted", "compressed")
    failed = False
    for done in tasks.prune(dry_run=dry_run):
        kept = "keeps %d days, from %s" % (done["days"], done["cutoff"]) if done["days"] else "keeps all"
        parts = []
        for writer in tasks.runtime.writers:
            counts = done[writer]
            if "error" in counts:
                failed = True
                parts.append("%s: failed: %s" % (writer, counts["error"]))
            elif writer == "db":
                parts.append("db: %s %d rows" % (delete, counts["deleted"]))
            else:
                parts.append("file: %s %d files, %s %d" % (
                    delete, counts["deleted"], compress, counts["compressed"]))
        click.echo("%s (id %d, %s): %s" % (escape(done["project"]), done["id"], kept, escape("; ".join(parts))))
    if failed:
        fail("some writers could not prune; see above")


@cli.command("rebuild-counts")
@click.argument("project", required=False)
def rebuild_counts(project):
    """Count a project's stored logs per minute and level afresh (all projects without PROJECT), for rows stored without counts (safe to run again)."""
    with models.database.connection_context():
        projects = [find_project(project)] if project else list(Project.select().order_by(Project.id))
    for each in projects:
        click.echo("%s (id %d): counted %d logs" % (escape(each.name), each.id, models.LogCount.rebuild(each.id)))


@cli.command()
@click.argument("project", required=False)
def stats(project):
    """Each writer's queue and last write, then records per level over the last hour and day (database rows, by record timestamp)."""
    # The queue first: it lives in Redis, so it is shown even while the database is down;
    # with Redis down, the database's counts are shown before the queue's error.
    try:
        writers = [(writer, tasks.runtime.spool.queued_records(writer), tasks.last_write(writer))
                   for writer in tasks.runtime.writers]
    except spool.SpoolUnavailable as error:
        unreadable_queue = error
    else:
        unreadable_queue = None
        click.echo("%-6s %9s  %s" % ("writer", "queued", "last write"))
        for writer, queued, written in writers:
            when = ("%s (%.0f s ago)" % (
                datetime.datetime.fromtimestamp(written, datetime.timezone.utc).isoformat(timespec="seconds"),
                time.time() - written) if written else "none in the last %d days" % (
                tasks.LAST_WRITE_KEPT_SECONDS // 86400))
            click.echo("%-6s %9d  %s" % (writer, queued, when))
        click.echo()
    projects = [find_project(project)] if project else list(Project.select().order_by(Project.id))
    now = models.utcnow()
    click.echo("%-4s %-24s %-8s %9s %9s" % ("id", "project", "level", "last hour", "last day"))
    for each in projects:
        with models.using_replica():
            hour = Log.count_levels(each.id, now - datetime.timedelta(hours=1))
            day = Log.count_levels(each.id, now - datetime.timedelta(days=1))
        for level in records.LEVELS:
            click.echo("%-4d %-24s %-8s %9d %9d" % (each.id, escape(each.name), level, hour.get(level, 0),
                                                    day.get(level, 0)))
    if unreadable_queue is not None:
        raise unreadable_queue  # DatabaseCommand makes it one line, exit status 1, as for other commands


LEVEL_COLOURS = {"DEBUG": "blue", "INFO": "green", "WARN": "yellow", "ERROR": "red", "CRITICAL": "magenta"}
# How often tail --follow asks the database for new logs.
FOLLOW_INTERVAL_SECONDS = 1.0


def echo_log(log):
    """Print one log as a line: time, level (coloured on a terminal), message, compact metadata."""
    shown = query.render(log)
    # Escaped whether or not stdout is a terminal: a pipe often ends in one (less -R, a pager).
    metadata = "  " + escape(orjson.dumps(shown["metadata"]).decode()) if shown["metadata"] else ""
    click.echo("%s %s %s%s" % (shown["timestamp"], click.style(shown["level"].ljust(8),
                                                               fg=LEVEL_COLOURS[shown["level"]]),
                               escape(shown["message"]), metadata))


@cli.command()
@click.argument("project")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new logs until interrupted (Ctrl-C).")
@click.option("--level", multiple=True, help="Only these levels (repeat it, or separate with commas).")
@click.option("--min-level", help="Only this level and those above it.")
@click.option("--grep", help="Only messages containing TEXT (case-insensitive for ASCII letters).")
@click.option("--since", help="Print every log from this time on (RFC 3339 or epoch), instead of the last --lines.")
@click.option("--lines", "-n", type=click.IntRange(1, query.MAX_LIMIT), default=20, show_default=True,
              help="Without --since, how many of the newest logs to print first.")
@click.option("--lookback", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="With --follow, also show logs written late if timestamped within this many seconds"
                   " of now.")
def tail(project, follow, level, min_level, grep, since, lines, lookback):
    """Print a project's stored logs, oldest first; with --follow, then new ones as they are written."""
    project = find_project(project)
    given = [("level", value) for value in level] + [
        (name, value) for name, value in (("min_level", min_level), ("q", grep), ("since", since))
        if value is not None]
    try:
        log_filter = query.parse_filter(given)
    except query.InvalidQuery as error:
        fail(str(error))
    page_bytes = tasks.runtime.settings.max_page_bytes
    # id → timestamp of the logs within the lookback window not to print again.
    seen = {}
    floor = models.utcnow() - datetime.timedelta(seconds=lookback)
    with models.using_replica():
        print_first(project, log_filter, since, lines, follow, floor, seen)
    try:
        while follow:
            time.sleep(FOLLOW_INTERVAL_SECONDS)
            floor = models.utcnow() - datetime.timedelta(seconds=lookback)
            try:
                with models.using_replica(), models.database.connection_context():
                    for log in query.logs_since(project.id, log_filter, floor, seen, page_bytes):
                        echo_log(log)
            except (peewee.OperationalError, peewee.InterfaceError) as error:
                click.echo("database unavailable (%s); retrying" % escape(str(error).strip()), err=True)
    except KeyboardInterrupt:
        # Ctrl-C is how --follow ends.
        pass


def print_first(project, log_filter, since, lines, follow, floor, seen):
    """What tail prints before following: the last --lines logs, or every log since --since; noted in seen to follow."""
    page_bytes = tasks.runtime.settings.max_page_bytes
    if since is None:
        if follow:
            # The window's logs older than the last --lines are not new: the
            # first poll must not print them.
            query.remember(project.id, log_filter, floor, seen)
        newest, page_filter = [], log_filter.replace(limit=lines)
        # Pages stop early when logs are large (LOGFLOW_MAX_PAGE_BYTES): follow them to --lines.
        while len(newest) < lines:
            rows, after = query.fetch(project.id, page_filter, page_bytes)
            newest.extend(rows)
            if after is None:
                break
            page_filter = page_filter.replace(limit=lines - len(newest), after=after)
        for log in reversed(newest):
            if follow:
                seen[log.id] = log.timestamp
            echo_log(log)
    else:
        for log in query.logs_from(project.id, log_filter, floor, seen if follow else None, page_bytes):
            echo_log(log)


@cli.command("search-index")
@click.option("--drop", is_flag=True, help="Drop the index instead.")
def search_index(drop):
    """PostgreSQL: build a trigram index that serves GET /logs?q= and tail --grep; every insert then pays for it."""
    try:
        models.set_search_index(not drop)
    except ValueError as error:
        fail(str(error))
    except peewee.DatabaseError as error:
        # No right to create the extension, or the build was cancelled: say so, no traceback.
        fail("PostgreSQL refused: %s" % str(error).strip())
    click.echo("trigram index %s %s" % (models.SEARCH_INDEX, "dropped" if drop else "ready"))


@cli.group()
def search():
    """Saved searches: add, list or remove them (an alert is a rule on one)."""


@search.command("add")
@click.argument("project")
@click.argument("name")
@click.argument("text", metavar="QUERYSTRING", default="")
def search_add(project, name, text):
    """Save a search NAME: QUERYSTRING is GET /logs' filters, e.g. 'level=ERROR&q=timeout'."""
    project = find_project(project)
    try:
        alerts.save_search(project, name, text)
    except alerts.AlertError as error:
        fail(str(error))
    click.echo("saved search %s of project %s: %s" % (escape(name), escape(project.name), escape(text or "every log")))


@search.command("list")
@click.argument("project")
def search_list(project):
    """List a project's saved searches: name, query, and its alert if it has one."""
    project = find_project(project)
    for saved in project.searches.order_by(models.SavedSearch.name):
        rule = saved.rules.first()
        click.echo("%-24s %-40s %s" % (escape(saved.name), escape(saved.query or "(every log)"),
                                       "alert: %s, %s" % (rule.channel, rule.state) if rule else ""))


@search.command("remove")
@click.argument("project")
@click.argument("name")
def search_remove(project, name):
    """Remove a saved search, and its alert if it has one."""
    project = find_project(project)
    saved = alerts.find_search(project, name)
    if saved is None:
        fail("project %s has no saved search named %r" % (escape(project.name), name))
    saved.delete_instance(recursive=True)
    click.echo("saved search %s removed from project %s" % (escape(name), escape(project.name)))


@cli.group()
def alert():
    """Alert rules on saved searches: add, list, remove, or test one."""


def find_rule(project, name):
    """The project's alert of this name; exits if there is none."""
    rule = alerts.find_rule(project, name)
    if rule is None:
        fail("project %s has no alert named %r" % (escape(project.name), name))
    return rule


@alert.command("add")
@click.argument("project")
@click.argument("name")
@click.option("--query", "text", metavar="QUERYSTRING",
              help="GET /logs' own parameters, e.g. 'level=ERROR&q=timeout&meta.service=api'; saved as the"
                   " search NAME (leave it out to alert on the saved search NAME).")
@click.option("--threshold", type=click.IntRange(1), help="Fire at this many matching logs within --window.")
@click.option("--window", type=click.IntRange(1, alerts.MAX_WINDOW_MINUTES), metavar="MINUTES",
              help="The threshold's window.")
@click.option("--absent-for", type=click.IntRange(1, alerts.MAX_WINDOW_MINUTES), metavar="MINUTES",
              help="Fire when no log matches within this many minutes.")
@click.option("--webhook", metavar="URL", help="POST signed JSON to this URL.")
@click.option("--slack", metavar="URL", help="A Slack-compatible incoming webhook URL.")
@click.option("--email", metavar="ADDRESS", help="Send email here (through LOGFLOW_SMTP_URL).")
@click.option("--repeat", type=click.IntRange(1), metavar="MINUTES",
              help="While firing, notify again this often (default: once).")
def alert_add(project, name, text, threshold, window, absent_for, webhook, slack, email, repeat):
    """Add an alert NAME: a saved search (--query), a rule on it, and one channel; a webhook's secret is printed once."""
    project = find_project(project)
    if (threshold is None) == (absent_for is None) or (threshold is None) != (window is None):
        fail("give either --threshold N --window MINUTES, or --absent-for MINUTES")
    channels = [(channel, target) for channel, target in
                (("webhook", webhook), ("slack", slack), ("email", email)) if target is not None]
    if len(channels) != 1:
        fail("give one channel: --webhook URL, --slack URL or --email ADDRESS")
    [(channel, target)] = channels
    try:
        # One transaction: a rule refused leaves no saved search behind.
        with models.database.atomic():
            search = alerts.find_search(project, name)
            if search is None:
                search = alerts.save_search(project, name, text or "")
            elif text is not None and text != search.query:
                raise alerts.AlertError("the saved search %s has the query %r; leave --query out to use it, or"
                                        " choose another name" % (name, search.query))
            rule, secret = alerts.add_rule(
                search, "absence" if absent_for else "threshold", absent_for or window, channel, target,
                tasks.runtime.settings, threshold=threshold, repeat_minutes=repeat)
    except alerts.AlertError as error:
        fail(str(error))
    click.echo("alert %s added to project %s: %s, to %s" % (
        escape(name), escape(project.name), escape(alerts.describe(rule)), channel), err=True)
    if secret:
        click.echo("Signing secret (shown once; receivers verify X-LogFlow-Signature with it):", err=True)
        click.echo(secret)


@alert.command("list")
@click.argument("project", required=False)
def alert_list(project):
    """List alerts: project, name, rule, channel, state, last evaluation, last error."""
    shown = alerts.rules(find_project(project) if project else None)
    rows = []
    for rule in shown:
        evaluated = ("%s (%d)" % (rule.evaluated_at.isoformat(timespec="seconds"), rule.last_count)
                     if rule.evaluated_at else "not yet")
        rows.append((escape(rule.search.project.name), escape(rule.search.name), escape(alerts.describe(rule)),
                     rule.channel, rule.state, evaluated, escape((rule.last_error or "-").splitlines()[0][:120])))
    click.echo("%-16s %-20s %-8s %-7s %-26s %s" % ("project", "name", "channel", "state", "last evaluation (count)",
                                                 "rule; last error"))
    for project_name, name, rule, channel, state, evaluated, error in rows:
        click.echo("%-16s %-20s %-8s %-7s %-26s %s; %s" % (project_name, name, channel, state, evaluated, rule, error))


@alert.command("remove")
@click.argument("project")
@click.argument("name")
def alert_remove(project, name):
    """Remove an alert, its saved search, its history and any notification not yet sent."""
    project = find_project(project)
    rule = find_rule(project, name)
    rule.search.delete_instance(recursive=True)
    click.echo("alert %s removed from project %s" % (escape(name), escape(project.name)))


@alert.command("test")
@click.argument("project")
@click.argument("name")
def alert_test(project, name):
    """Send a test notification now, and say what the channel answered."""
    rule = find_rule(find_project(project), name)
    notification_id = alerts.record_test(rule, tasks.runtime.settings)
    outcome = alerts.deliver(notification_id, tasks.runtime.settings, tasks.runtime.spool.add_counters)
    if outcome == "sent":
        click.echo("test notification %s delivered by %s" % (notification_id, rule.channel))
        return
    error = models.Notification.get_by_id(notification_id).last_error
    if outcome == "retry":
        tasks.send_notification.schedule((notification_id,), delay=60)
        fail("test notification %s not delivered: %s; a consumer will try again" % (notification_id, escape(error)))
    fail("test notification %s not delivered: %s" % (notification_id, escape(error or "")))


if __name__ == "__main__":
    cli()
