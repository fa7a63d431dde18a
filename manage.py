"""LogFlow's command line: projects, their API keys, and quarantined records."""
import sys

import click
import orjson

import config
import models
import spool
import tasks
from models import ApiKey, Project, Quarantined


def fail(message):
    """Print an error to stderr and exit non-zero."""
    click.echo("error: %s" % message, err=True)
    sys.exit(1)


def find_project(name_or_id):
    project = Project.lookup(name_or_id)
    if project is None:
        fail("no project named %r" % name_or_id)
    return project


def storage_option(value):
    if value is None:
        return None
    try:
        return ",".join(config.parse_storage(value))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.group()
def cli():
    """Manage LogFlow's projects, API keys and quarantine (settings come from the environment and .env)."""
    tasks.configure(config.load())
    models.create_tables()


@cli.command("init-db")
def init_db():
    """Create the database tables that are missing (safe to run again)."""
    click.echo("database ready")


@cli.command("add-project")
@click.argument("name")
@click.option("--storage", callback=lambda ctx, param, value: storage_option(value),
              help="Writers for this project: db, file or db,file (default: LOGFLOW_STORAGE).")
def add_project(name, storage):
    """Create a project and print its first API key (shown only this once)."""
    if Project.get_or_none(Project.name == name):
        fail("a project named %r already exists" % name)
    with models.database.atomic():
        project = Project.create(name=name, storage=storage)
        key = ApiKey.issue(project)
    click.echo("project %s created (id %d)" % (name, project.id), err=True)
    click.echo("API key (shown once, store it now):", err=True)
    click.echo(key)


@cli.command("set-rate-limit")
@click.argument("project")
@click.argument("records_per_second", type=click.IntRange(min=0))
def set_rate_limit(project, records_per_second):
    """Limit a project to RECORDS_PER_SECOND (0: no limit); web processes apply it within LOGFLOW_KEY_CACHE_SECONDS."""
    project = find_project(project)
    project.rate_limit = records_per_second
    project.save()
    click.echo("project %s: %s" % (project.name, "%d records per second" % records_per_second
                                   if records_per_second else "no rate limit"))


@cli.command("list-projects")
def list_projects():
    """List projects: id, name, active, storage, rate limit, and the prefixes of their live keys."""
    click.echo("%-4s %-24s %-7s %-8s %-8s %s" % ("id", "name", "active", "storage", "rate/s", "keys"))
    for project in Project.select().order_by(Project.id):
        prefixes = [key.prefix + "…" for key in project.keys.where(ApiKey.revoked_at.is_null())]
        rate = "default" if project.rate_limit is None else str(project.rate_limit or "none")
        click.echo("%-4d %-24s %-7s %-8s %-8s %s" % (
            project.id, project.name, "yes" if project.is_active else "no",
            project.storage or "default", rate, " ".join(prefixes) or "-"))


@cli.command("create-key")
@click.argument("project")
def create_key(project):
    """Create another API key for a project (for rotation) and print it once."""
    key = ApiKey.issue(find_project(project))
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
        fail("no live key with prefix %r (give the whole prefix list-projects shows)" % prefix)
    if len(keys) > 1:
        fail("%d live keys share prefix %r; none was revoked" % (len(keys), prefix))
    keys[0].revoked_at = models.utcnow()
    keys[0].save()
    click.echo("revoked %s…; web processes refuse it within LOGFLOW_KEY_CACHE_SECONDS" % prefix)


def set_active(project, active):
    project = find_project(project)
    project.is_active = active
    project.save()
    click.echo("project %s %s" % (project.name, "activated" if active else "deactivated"))


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
            entry.id, entry.writer, entry.project, entry.quarantined_at.isoformat(timespec="seconds"),
            entry.error.splitlines()[0][:100] if entry.error else ""))


@quarantine.command("show")
@click.argument("entry_id", type=int)
def quarantine_show(entry_id):
    """Print one quarantined record in full, with its error."""
    [entry] = quarantined(entry_id, False)
    click.echo(orjson.dumps({
        "id": entry.id, "writer": entry.writer, "project": entry.project,
        "received_at": entry.received_at, "quarantined_at": entry.quarantined_at.isoformat(),
        "error": entry.error, "record": orjson.loads(entry.record)}, option=orjson.OPT_INDENT_2))


@quarantine.command("replay")
@click.argument("entry_id", type=int, required=False)
@click.option("--all", "everything", is_flag=True, help="Replay every quarantined record.")
def quarantine_replay(entry_id, everything):
    """Queue quarantined records for their writer again (after fixing the cause) and remove them here."""
    entries = quarantined(entry_id, everything)
    for entry in entries:
        # Queued first, removed second: a crash in between repeats, never loses.
        payload = spool.encode(entry.project, entry.received_at, [orjson.loads(entry.record)])
        for writer in tasks.runtime.spool.push(payload, [entry.writer], 1):
            tasks.drain(writer)
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


if __name__ == "__main__":
    cli()
