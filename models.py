"""Peewee models: projects, their API keys, the stored logs, and the people who read them."""
import contextlib
import datetime
import functools
import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time

import orjson
from peewee import (SQL, BigIntegerField, BooleanField, CharField, CompositeKey, DatabaseProxy,
                    DateTimeField, ForeignKeyField, IntegerField, JSONField, Model,
                    OperationalError, PostgresqlDatabase, ProgrammingError, SqliteDatabase, TextField, UUIDField, fn)
from playhouse import db_url
from playhouse.migrate import SchemaMigrator, migrate
from werkzeug.security import check_password_hash, generate_password_hash

from config import MAX_RETENTION_DAYS, parse_storage


class RoutedDatabase(DatabaseProxy):
    """The models' database: the primary, or, on a thread inside using_replica(), the read replica.

    Peewee's bind_ctx() would rebind the model classes themselves, for every
    thread at once: a web thread reading the replica would send another's
    writes there. Here the choice is per thread, as Peewee's connections are.
    """

    # Proxy.__setattr__ allows the names of the class's own __slots__ only: all of them again.
    __slots__ = ("obj", "_callbacks", "_Model", "replica", "routes")

    def __init__(self):
        super().__init__()
        self.replica = None
        self.routes = threading.local()

    def current(self):
        """The database this thread's queries go to now."""
        return getattr(self.routes, "database", None) or self.obj

    def __getattr__(self, attr):
        if self.obj is None:
            raise AttributeError("Cannot use uninitialized Proxy.")
        return getattr(self.current(), attr)

    def __enter__(self):
        return self.current().__enter__()

    def __exit__(self, *details):
        return self.current().__exit__(*details)


# Bound to SQLite or PostgreSQL (and a read replica) by bind_database();
# importing this module opens nothing.
database = RoutedDatabase()

KEY_PREFIX = "lf_"
# "lf_" and eight random characters: enough to tell keys apart in a listing,
# far too little to guess the rest.
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 8


def utcnow():
    """The current time as a naive UTC datetime, the form every column stores."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


# Characters a terminal acts on instead of showing: C0 controls, DEL, C1
# controls, and the bidirectional embeddings, overrides and isolates, which
# reorder the text that follows them.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def is_id(text):
    """True for a text of ASCII digits only: what manage.py reads as a project id, never as a name."""
    return text.isascii() and text.isdigit()


def name_problem(name, what):
    """Why a text cannot name a `what` (a project, a user): it would not be seen as typed; None if it can."""
    if not name.strip():
        return "a %s name cannot be empty or blank" % what
    if CONTROL_CHARACTERS.search(name):
        return "a %s name cannot hold control characters" % what
    if name != name.strip():
        return "a %s name cannot start or end with a space" % what
    return None


def hash_key(plaintext):
    """The stored form of a key or session token: they are long random strings, so SHA-256 suffices."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


# How long a SQLite statement waits for another connection's lock.
SQLITE_TIMEOUT_SECONDS = 30


def use_wal(connection, timeout_seconds=SQLITE_TIMEOUT_SECONDS):
    """Put a SQLite file in WAL mode, trying again while another connection does it first.

    On a new file, every process that opens it at once (dev mode's gunicorn
    workers and consumer at start-up) writes WAL into its header: a read
    upgraded to a write, which SQLite refuses at once with "database is
    locked" when another connection is writing, without the busy timeout
    (waiting could deadlock; see sqlite.org/c3ref/busy_handler.html). The
    failed statement holds no lock, so the first to write finishes and the
    next attempt finds the file in WAL mode already.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            connection.execute("PRAGMA journal_mode=wal")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.001)


class WalSqliteDatabase(SqliteDatabase):
    """SQLite whose connections switch the file to WAL with use_wal's retry, before the other pragmas."""

    def _set_pragmas(self, conn):
        use_wal(conn)
        super()._set_pragmas(conn)


# libpq's defaults wait for ever: a server that accepts TCP and never answers (or a host gone) would hold
# a web thread or the consumer's alert pass past any statement_timeout, which the server enforces only once
# connected. Seconds; a URL's own values win (?connect_timeout=...).
CONNECTION_DEFAULTS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                       "keepalives_count": 3, "tcp_user_timeout": 60_000}


def open_postgres(url):
    """A pooled PostgreSQL database of a DATABASE_URL, with bounded connects and keepalives; connects lazily."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        # A pool per process keeps per-task connects cheap in the consumer.
        url = "postgresql+pool://" + rest
    # db_url.connect's keyword arguments override the URL's query string: pass only what it lacks.
    given = db_url.parse(url)
    defaults = {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in given}
    return db_url.connect(url, max_connections=32, stale_timeout=300, **defaults)


def bind_database(settings):
    """Create the database the settings name (and the read replica, if any) and bind the models to it; connects lazily."""
    database.replica = open_postgres(settings.database_read_url) if settings.database_read_url else None
    if settings.database_url:
        db = open_postgres(settings.database_url)
    else:
        os.makedirs(settings.data_dir, exist_ok=True)
        db = WalSqliteDatabase(
            settings.sqlite_path,
            pragmas={"synchronous": "normal", "busy_timeout": SQLITE_TIMEOUT_SECONDS * 1000,
                     "foreign_keys": 1},
            # Writers take the lock at BEGIN instead of failing at upgrade time.
            lock_type="IMMEDIATE")
    database.initialize(db)
    return db


@contextlib.contextmanager
def using_replica():
    """Send this thread's queries to the read replica (DATABASE_READ_URL) within the block, on a connection of its own.

    For reads of stored logs only: a replica refuses writes, and shows a
    commit a little after the primary does. Without a replica, queries go
    to the primary as before, on the caller's connection.
    """
    replica = database.replica
    previous = getattr(database.routes, "database", None)
    if replica is None or previous is replica:
        yield
        return
    database.routes.database = replica
    try:
        with replica.connection_context():
            yield
    finally:
        database.routes.database = previous


@contextlib.contextmanager
def using_primary():
    """Send this thread's queries to the primary within the block, inside using_replica() too (what a read leads to write)."""
    previous = getattr(database.routes, "database", None)
    database.routes.database = None
    try:
        yield
    finally:
        database.routes.database = previous


# How long replica_lag_seconds() waits for the replica to replay the primary's position: a replica
# streaming as it should does in milliseconds.
REPLICA_CATCH_UP_SECONDS = 3.0


def replica_lag_seconds(wait_seconds=REPLICA_CATCH_UP_SECONDS):
    """How far the read replica's data is behind its primary, in seconds; 0 without a replica, None when it cannot say.

    The primary's WAL insert position is read first (not pg_current_wal_lsn():
    with synchronous_commit=off a commit is visible before its WAL is
    written), then the replica is polled until it has replayed that far: the
    lag is the time that took. A replica that has not within wait_seconds
    (cut off from its primary, its replay paused or slow) is behind by the age
    of the last transaction it replayed, at least wait_seconds; None if it
    replayed none. Asking the replica alone cannot tell: one that receives
    nothing has replayed all it received.
    """
    if database.replica is None:
        return 0.0
    with using_primary(), database.connection_context():
        target = database.execute_sql("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    started = time.monotonic()
    with using_replica():
        while True:
            # At a WAL page's start the insert position is past the page's header (24 or 40 bytes),
            # where no record ends: a replica that replayed everything stops short of it by that much.
            replayed, age = database.execute_sql(
                "SELECT NOT pg_is_in_recovery() OR pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn()) <= 0"
                " OR (pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn()) <= 40 AND pg_wal_lsn_diff("
                "pg_last_wal_replay_lsn(), '0/0') %% current_setting('wal_block_size')::numeric = 0),"
                " extract(epoch FROM now() - pg_last_xact_replay_timestamp())", (target, target)).fetchone()
            waited = time.monotonic() - started
            if replayed:
                return waited
            if waited >= wait_seconds:
                return None if age is None else max(waited, float(age))
            time.sleep(0.02)


def on_postgres():
    """True when the bound database is PostgreSQL, where SQL and column forms differ from SQLite's."""
    return isinstance(database.obj, PostgresqlDatabase)


@contextlib.contextmanager
def durable_transaction():
    """A transaction whose COMMIT returns only once it is on disk, whatever synchronous_commit says.

    A consumer deletes a batch from the spool as soon as COMMIT returns. With
    synchronous_commit=off (a common tuning) COMMIT returns before its WAL is
    written, and a crash of PostgreSQL then loses rows LogFlow has already let
    go of. 'local' waits for this server's disk only; stronger settings stay.
    """
    with database.atomic():
        if on_postgres():
            database.execute_sql("SELECT set_config('synchronous_commit', 'local', true)"
                                 " WHERE current_setting('synchronous_commit') = 'off'")
        yield


def create_tables():
    """Create every table and index that is missing; safe to run again."""
    with database.connection_context():
        counted = database.table_exists(LogCount._meta.table_name)
        database.create_tables(MODELS, safe=True)
        for model in MODELS:
            add_missing_columns(model)
        if not counted:
            # The rollup is new to a database that may hold rows already: count them once.
            # Read whole first: on SQLite an open read would make the rebuild's BEGIN IMMEDIATE fail at once.
            for project_id in [project.id for project in Project.select(Project.id).order_by(Project.id)]:
                LogCount.rebuild(project_id)


def add_missing_columns(model):
    """Add the columns a model gained since its table was created: create_tables never alters a table."""
    table = model._meta.table_name
    existing = {column.name for column in database.get_columns(table)}
    missing = [field for field in model._meta.sorted_fields if field.column_name not in existing]
    if not missing:
        return
    migrator = SchemaMigrator.from_database(database.obj)
    try:
        migrate(*[migrator.add_column(table, field.column_name, field) for field in missing])
    except (OperationalError, ProgrammingError):
        # Another process starting at the same time may have added them first.
        present = {column.name for column in database.get_columns(table)}
        if any(field.column_name not in present for field in missing):
            raise


class BaseModel(Model):
    class Meta:
        database = database


class Project(BaseModel):
    class Meta:
        table_name = "projects"

    name = CharField(unique=True)
    is_active = BooleanField(default=True)
    # Empty means the LOGFLOW_STORAGE default; else "db", "file" or "db,file".
    storage = CharField(null=True)
    # Records per second; empty means LOGFLOW_RATE_LIMIT, 0 means no limit.
    rate_limit = IntegerField(null=True)
    # Days of logs kept; empty means LOGFLOW_RETENTION_DAYS, 0 means forever.
    retention_days = IntegerField(null=True)
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def lookup(cls, name_or_id):
        """The project with this id if the text is all ASCII digits, else with this name; None if there is none."""
        if is_id(name_or_id):
            # Length first: int() of thousands of digits raises, and no id is that long.
            return cls.get_or_none(cls.id == int(name_or_id)) if len(name_or_id.lstrip("0")) <= 18 else None
        return cls.get_or_none(cls.name == name_or_id)

    @staticmethod
    def name_problem(name):
        """Why a text cannot name a project (it could be mistaken for an id, or not be seen as typed); None if it can."""
        if name.strip() and name.isdigit():
            return "a project name cannot be a number: numbers are project ids"
        return name_problem(name, "project")

    def writers(self, default):
        """The writers this project's records go to."""
        return parse_storage(self.storage) if self.storage else default

    def retention(self, default):
        """Days of logs this project keeps; 0 means forever."""
        return self.kept_days(self.retention_days, default)

    @staticmethod
    def kept_days(retention_days, default):
        """Days of logs a project with this stored retention_days keeps (web processes have only the column's value)."""
        if retention_days is None:
            return default
        # set-retention refuses more; versions before it stored up to 2**31-1, which pruning cannot reach back to.
        return min(retention_days, MAX_RETENTION_DAYS)


class ApiKey(BaseModel):
    class Meta:
        table_name = "api_keys"

    project = ForeignKeyField(Project, backref="keys", on_delete="CASCADE")
    prefix = CharField(index=True)
    key_hash = CharField(unique=True)
    scope = CharField(default="ingest")
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField(null=True)

    @classmethod
    def issue(cls, project, scope="ingest"):
        """Create a key for the project; returns the plaintext, which is never stored."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        cls.create(project=project, prefix=plaintext[:SHOWN_PREFIX_LENGTH],
                   key_hash=hash_key(plaintext), scope=scope)
        return plaintext

    @classmethod
    def find(cls, plaintext):
        """The live key matching this plaintext, with its project; None if unknown or revoked."""
        return (cls.select(cls, Project).join(Project)
                .where(cls.key_hash == hash_key(plaintext), cls.revoked_at.is_null())
                .first())


class Log(BaseModel):
    id = UUIDField()
    project = ForeignKeyField(Project, backref="logs", on_delete="CASCADE")
    level = CharField(max_length=8)
    message = TextField()
    metadata = JSONField(dumps=lambda value: orjson.dumps(value).decode())
    timestamp = DateTimeField()
    received_at = DateTimeField()

    class Meta:
        table_name = "logs"
        # Ids are unique per project, so one project's ids can never shadow
        # another's records when writes skip duplicates.
        primary_key = CompositeKey("project", "id")
        # Serves "newest logs of a project" and keyset pages on (timestamp, id).
        indexes = ((("project", "timestamp", "id"), False),)

    @classmethod
    def count_levels(cls, project_id, since):
        """{level: rows} of a project's records timestamped at or after `since`."""
        query = (cls.select(cls.level, fn.COUNT(SQL("*")).alias("rows"))
                 .where(cls.project == project_id, cls.timestamp >= since).group_by(cls.level))
        return {row.level: row.rows for row in query}


EPOCH = datetime.datetime(1970, 1, 1)
MINUTE = datetime.timedelta(minutes=1)
# Count rows upserted per statement: four parameters each, far under SQLite's 32,766.
COUNT_CHUNK_ROWS = 1000


def minute_of(column='"timestamp"'):
    """SQL text for the whole minutes from the Unix epoch to the start of a timestamp column's minute."""
    if on_postgres():
        # The minute's start is a whole number of minutes, so the division is exact, before 1970 too.
        return "(extract(epoch FROM date_trunc('minute', %s)) / 60)::bigint" % column
    # SQLite holds "YYYY-MM-DD HH:MM:SS[.ffffff]": the first 16 characters are the minute.
    return "CAST(strftime('%%s', substr(%s, 1, 16) || ':00') AS INTEGER) / 60" % column


def minute_of_text(text):
    """The whole minutes from the Unix epoch to an RFC 3339 time as the spool carries it ("2026-11-27T10:00:00.000000Z")."""
    return (datetime.datetime.fromisoformat(text[:16]) - EPOCH) // MINUTE


class LogCount(BaseModel):
    """How many logs a project holds per minute and level: what a histogram reads instead of the rows.

    The database writer keeps it in the transactions that insert and delete
    rows, counting only the rows a statement actually inserted or deleted, so
    it equals the rows whatever is redelivered; rebuild() counts it afresh.
    """

    # Peewee's index on project_id alone would only repeat the primary key's first column.
    project = ForeignKeyField(Project, on_delete="CASCADE", index=False)
    # Whole minutes from the Unix epoch (minute_of): integers bucket alike on both backends.
    minute = BigIntegerField()
    level = CharField(max_length=8)
    number = BigIntegerField()

    class Meta:
        table_name = "log_counts"
        primary_key = CompositeKey("project", "minute", "level")

    @classmethod
    def add(cls, counts):
        """Add {(project id, minute, level): n} to the counts (n may be negative), in key order.

        Consumers upsert the same rows at once; taking their locks in one order
        keeps two transactions from each waiting for the other's.
        """
        rows = [(project, minute, level, number) for (project, minute, level), number in sorted(counts.items())
                if number]
        # Written out: Peewee took 0.5 ms to build it for a typical batch's 15 rows, a writer's 5 %.
        values = "(%s)" % ", ".join([database.param] * 4)
        for start in range(0, len(rows), COUNT_CHUNK_ROWS):
            chunk = rows[start:start + COUNT_CHUNK_ROWS]
            database.execute_sql(
                "INSERT INTO log_counts (project_id, minute, level, number) VALUES %s"
                " ON CONFLICT (project_id, minute, level) DO UPDATE SET number = log_counts.number + excluded.number"
                % ", ".join([values] * len(chunk)), [value for row in chunk for value in row])

    @classmethod
    def rebuild(cls, project_id):
        """Count a project's rows afresh (after they were stored without counts); safe to run again.

        One transaction, with writers held off so that none stores or deletes
        rows between the count and its commit; returns the rows counted.
        """
        with database.connection_context(), durable_transaction():
            if on_postgres():
                # SHARE lets reads through and waits for, then blocks, every writer of logs.
                database.execute_sql("LOCK TABLE logs IN SHARE MODE")
            # else: SQLite's writers take the one write lock at BEGIN (lock_type IMMEDIATE).
            cls.delete().where(cls.project == project_id).execute()
            rows = (Log.select(Log.project, SQL(minute_of()), Log.level, fn.COUNT(SQL("*")))
                    .where(Log.project == project_id).group_by(SQL("1"), SQL("2"), SQL("3")))
            cls.insert_from(rows, [cls.project, cls.minute, cls.level, cls.number]).as_rowcount().execute()
            return cls.select(fn.COALESCE(fn.SUM(cls.number), 0)).where(cls.project == project_id).scalar()


class Quarantined(BaseModel):
    """A record a writer could not store while the writer itself worked: kept, with why, for an operator."""

    writer = CharField()
    # No foreign key: a vanished project may be the very reason.
    project = IntegerField()
    received_at = CharField()
    # The spooled record as JSON text: escapes keep even a NUL storable here.
    record = TextField()
    error = TextField()
    quarantined_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "quarantine"

    @classmethod
    def count_by_writer(cls):
        """{writer: records set aside} of the writers that have any."""
        return dict(cls.select(cls.writer, fn.COUNT(SQL("*"))).group_by(cls.writer).tuples())

    @classmethod
    def add(cls, writer, item, error):
        """Set one (project id, received_at, record) item aside with the error that refused it."""
        project, received_at, record = item
        with durable_transaction():  # the record leaves the spool once it is here
            return cls.create(writer=writer, project=project, received_at=received_at,
                              record=orjson.dumps(record).decode(),
                              error=("%s: %s" % (type(error).__name__, error))[:2000])


class User(BaseModel):
    """A person who may sign in to the viewer and read some projects' logs, or every project's."""

    class Meta:
        table_name = "users"

    name = CharField(unique=True)
    # werkzeug's generate_password_hash: the method and its cost, a salt and the slow hash.
    password_hash = TextField()
    all_projects = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)

    def set_password(self, password):
        """Store a slow, salted hash of the password (never the password)."""
        self.password_hash = generate_password_hash(password)

    @classmethod
    def authenticate(cls, name, password):
        """The user with this name and password, or None; as slow for an unknown name as for a known one."""
        user = cls.get_or_none(cls.name == name)
        # An unknown name still costs a hash check, so timing does not tell which names exist.
        if not check_password_hash(user.password_hash if user else unknown_user_hash(), password):
            return None
        return user

    def readable_projects(self):
        """The projects this person may read, by name."""
        projects = Project.select().order_by(Project.name)
        return projects if self.all_projects else projects.join(Grant).where(Grant.user == self)

    def may_read(self, project):
        """True if this person may read the project's logs."""
        return self.all_projects or Grant.select().where(Grant.user == self, Grant.project == project).exists()


@functools.cache
def unknown_user_hash():
    """A hash no password matches, made the way real ones are, for User.authenticate to check unknown names against."""
    return generate_password_hash(secrets.token_urlsafe(32))


class Grant(BaseModel):
    """One project a user may read (a user with all_projects needs none)."""

    class Meta:
        table_name = "user_projects"
        primary_key = CompositeKey("user", "project")

    user = ForeignKeyField(User, backref="grants", on_delete="CASCADE")
    project = ForeignKeyField(Project, on_delete="CASCADE")


class Session(BaseModel):
    """A signed-in browser: its cookie holds a random token, this row only the token's hash.

    Rows are the truth: deleting them (sign-out, a new password, a removed
    user) ends those sessions at the next request.
    """

    class Meta:
        table_name = "sessions"

    token_hash = CharField(primary_key=True)
    user = ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(default=utcnow, index=True)

    # A browser unused this long is signed out: its next page is the sign-in form.
    IDLE_SECONDS = 12 * 3600
    # A session's last use is written at most this often: not one write per page.
    TOUCH_SECONDS = 60

    @classmethod
    def open(cls, user):
        """Start a session for the user; returns its token, which is never stored."""
        token = secrets.token_urlsafe(32)
        cls.create(token_hash=hash_key(token), user=user)
        return token

    @classmethod
    def live(cls):
        """The sessions used within IDLE_SECONDS."""
        return cls.select().where(cls.last_used_at >= utcnow() - datetime.timedelta(seconds=cls.IDLE_SECONDS))

    @classmethod
    def find(cls, token):
        """The live session of this token, with its user, noting its use; None if unknown, ended or idle too long."""
        now = utcnow()
        session = cls.select(cls, User).join(User).where(cls.token_hash == hash_key(token)).first()
        if session is None or session.last_used_at < now - datetime.timedelta(seconds=cls.IDLE_SECONDS):
            return None
        if session.last_used_at < now - datetime.timedelta(seconds=cls.TOUCH_SECONDS):
            cls.update(last_used_at=now).where(cls.token_hash == session.token_hash).execute()
        return session

    @classmethod
    def end(cls, token):
        """End the session of this token, if there is one."""
        cls.delete().where(cls.token_hash == hash_key(token)).execute()

    @classmethod
    def end_all(cls, user):
        """End every session of the user; returns how many there were."""
        return cls.delete().where(cls.user == user).execute()

    @classmethod
    def end_idle(cls):
        """Forget the sessions of every browser idle longer than IDLE_SECONDS."""
        cls.delete().where(cls.last_used_at < utcnow() - datetime.timedelta(seconds=cls.IDLE_SECONDS)).execute()


# An optional trigram index for GET /logs?q= and tail --grep on PostgreSQL. It
# indexes the C-collated message because that is what query.text_match's ILIKE
# reads (a plain one would not be used); every insert pays for it.
SEARCH_INDEX = "logs_message_trgm"


def set_search_index(present):
    """PostgreSQL: build (without locking out writers) or drop the trigram index on messages."""
    if not on_postgres():
        raise ValueError("only PostgreSQL has trigram indexes; SQLite searches messages with LIKE")
    # CONCURRENTLY runs outside a transaction, as Peewee runs statements by default.
    # An interrupted concurrent build leaves an invalid index that writes pay
    # for and reads never use: it is dropped and built again, never kept.
    valid = database.execute_sql("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                                 (SEARCH_INDEX,)).fetchone()
    if valid is not None and not (present and valid[0]):
        database.execute_sql("DROP INDEX CONCURRENTLY IF EXISTS %s" % SEARCH_INDEX)
    if present:
        database.execute_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        database.execute_sql('CREATE INDEX CONCURRENTLY IF NOT EXISTS %s ON logs USING gin'
                             ' ((message COLLATE "C") gin_trgm_ops)' % SEARCH_INDEX)


class SavedSearch(BaseModel):
    """A named query of one project, in GET /logs' own parameters (q, level, min_level, meta.<path>)."""

    class Meta:
        table_name = "saved_searches"
        indexes = ((("project", "name"), True),)

    project = ForeignKeyField(Project, backref="searches", on_delete="CASCADE")
    name = CharField()
    query = TextField()
    created_at = DateTimeField(default=utcnow)


class AlertRule(BaseModel):
    """A rule on a saved search, its channel, and its state; alerts.py evaluates and notifies."""

    class Meta:
        table_name = "alert_rules"

    search = ForeignKeyField(SavedSearch, backref="rules", on_delete="CASCADE", unique=True)
    # "threshold": at least `threshold` logs within the window; "absence": none within it.
    kind = CharField()
    threshold = IntegerField(null=True)
    window_minutes = IntegerField()
    # "webhook", "slack" or "email", and its URL or address.
    channel = CharField()
    target = TextField()
    # The webhook's signing secret: HMAC needs it itself, so it cannot be stored as a hash.
    secret = CharField(null=True)
    # Minutes between notifications while a rule keeps firing; empty: notify once.
    repeat_minutes = IntegerField(null=True)
    state = CharField(default="ok")
    changed_at = DateTimeField(default=utcnow)
    notified_at = DateTimeField(null=True)
    # The next minute to evaluate; consumers claim it by moving it on (alerts.claim).
    due_at = DateTimeField(default=utcnow, index=True)
    evaluated_at = DateTimeField(null=True)
    last_count = IntegerField(null=True)
    # The last delivery's error, cleared by the next success.
    last_error = TextField(null=True)
    created_at = DateTimeField(default=utcnow)


class AlertMinute(BaseModel):
    """How many logs a rule's search matched in one minute, once that minute is settled (alerts.count_rows)."""

    class Meta:
        table_name = "alert_minutes"
        primary_key = CompositeKey("rule", "minute")

    rule = ForeignKeyField(AlertRule, backref="minutes", on_delete="CASCADE")
    # Minutes since the epoch, as LogCount's.
    minute = BigIntegerField()
    count = IntegerField()


class AlertEvaluation(BaseModel):
    """One evaluation of a rule: what it counted and what it concluded (the last day's are kept)."""

    class Meta:
        table_name = "alert_evaluations"
        indexes = ((("rule", "at"), False),)

    rule = ForeignKeyField(AlertRule, backref="evaluations", on_delete="CASCADE")
    at = DateTimeField(default=utcnow)
    count = IntegerField(null=True)
    state = CharField()
    note = TextField(default="")


class Notification(BaseModel):
    """A notification LogFlow decided to send: recorded before it is sent, sent at least once.

    Its id is the delivery id a receiver sees on every attempt. Consumers claim
    it with a lease, so one killed mid-send leaves it to another.
    """

    class Meta:
        table_name = "notifications"

    id = UUIDField(primary_key=True)
    rule = ForeignKeyField(AlertRule, backref="notifications", on_delete="CASCADE")
    # "firing", "resolved" or "test".
    event = CharField()
    # The payload, built when the notification was decided: retries send the same.
    body = TextField()
    created_at = DateTimeField(default=utcnow)
    attempts = IntegerField(default=0)
    due_at = DateTimeField(default=utcnow, index=True)
    leased_until = DateTimeField(null=True)
    sent_at = DateTimeField(null=True)
    failed_at = DateTimeField(null=True)
    last_error = TextField(null=True)


MODELS = [Project, ApiKey, Log, LogCount, Quarantined, User, Grant, Session,
          SavedSearch, AlertRule, AlertMinute, AlertEvaluation, Notification]
