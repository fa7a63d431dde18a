"""Every LogFlow setting, read in one place from the environment (and `.env`)."""
import dataclasses
import logging
import math
import os
import re

from dotenv import load_dotenv

import redis_url

WRITERS = ("db", "file")

# Days of retention at most, for the setting and for manage.py set-retention:
# past about 700,000 the cutoff falls before year 1 and pruning fails.
MAX_RETENTION_DAYS = 36500


class InvalidSetting(ValueError):
    """A variable of the environment that load() cannot use; the message is "VARIABLE: reason"."""


def parse_storage(value):
    """Turn "db", "file" or "db,file" into a tuple of writer names, in a fixed order."""
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = names - set(WRITERS)
    if unknown or not names:
        raise ValueError("storage must be db, file or db,file, not %r" % value)
    return tuple(name for name in WRITERS if name in names)


@dataclasses.dataclass(frozen=True)
class Number:
    """A numeric setting: a whole number of 1 or more, or seconds above 0; 0 only where it means something.

    Called with the variable's text, returns the number or raises ValueError
    saying the form and the range in plain words.
    """

    seconds: bool = False
    # What 0 means, for the settings the code reads 0 as "off" or "forever"; empty: 0 is refused.
    zero: str = ""
    most: float = math.inf

    def __call__(self, text):
        try:
            value = float(text) if self.seconds else int(text)
        except ValueError:
            raise ValueError("must be %s, not %r" % (self.expected(), text)) from None
        # NaN compares false to everything, so every use would read it as "no"; inf overflows sleep and timeouts.
        if not (math.isfinite(value) and (value > 0 or value == 0 and self.zero) and value <= self.most):
            raise ValueError("must be %s, not %s" % (self.expected(), text))
        return value

    def expected(self):
        """The form and range, as the error message says them."""
        form = "a number of seconds" if self.seconds else "a whole number"
        least = "0 (%s)" % self.zero if self.zero else "1"
        if self.most < math.inf and self.seconds and not self.zero:
            return "%s above 0 and at most %d" % (form, self.most)
        if self.most < math.inf:
            return "%s from %s to %d" % (form, least, self.most)
        if self.zero:
            return "%s, %s or more" % (form, least)
        return form + (" above 0" if self.seconds else " of 1 or more")


@dataclasses.dataclass(frozen=True)
class Url:
    """A URL setting whose scheme must be one that the code opening it understands."""

    schemes: tuple

    def __call__(self, text):
        scheme, found, _ = text.partition("://")
        if found and scheme in self.schemes:
            return text
        expected = ", ".join("%s://" % name for name in self.schemes[:-1]) + " or %s://" % self.schemes[-1]
        # Only the scheme is shown: the rest of the URL may hold a password.
        if found and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
            raise ValueError("must start with %s, not %s://" % (expected, scheme))
        raise ValueError("must start with %s; this value has no scheme" % expected)


def parse_redis_url(value):
    """REDIS_URL: a scheme redis_url.connect opens, in a form it can read (the Sentinel form's hosts and service)."""
    return redis_url.check(Url(redis_url.SCHEMES)(value))


def parse_address(value):
    """An email address (the sender of email alerts), alone or as 'Name <address>'."""
    if "@" not in value or any(character in value for character in "\r\n"):
        raise ValueError("must be an email address such as logflow@example.com, not %r" % value[:100])
    return value


def parse_flag(value):
    """A yes/no setting: 1, true or yes; 0, false or no."""
    answer = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(value.lower())
    if answer is None:
        raise ValueError("must be 1 or 0 (true/false, yes/no), not %r" % value[:32])
    return answer


# Characters a signing secret has at least: secrets.token_urlsafe(32) gives 43, 256 random bits.
MIN_SECRET_LENGTH = 32


def parse_secret(value):
    """A secret for signing cookies: long enough that it cannot be guessed."""
    if len(value) < MIN_SECRET_LENGTH:
        # The length only: the value itself is never repeated.
        raise ValueError("must be at least %d characters long, not %d (make one with: python3 -c"
                         " 'import secrets; print(secrets.token_urlsafe(32))')" % (MIN_SECRET_LENGTH, len(value)))
    return value


def parse_log_level(value):
    """A level name of Python's logging, in any case (upper case in Settings)."""
    # Unchecked, an unknown name fails later in logging.basicConfig or the consumer's
    # start-up, in a traceback that does not name the variable.
    name = value.upper()
    if name not in logging.getLevelNamesMapping():
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not %r" % value)
    return name


# Why 0 is refused unless a setting says what it means: 0 bytes or records
# refuses every request (0 batch bytes claims nothing, so nothing is written);
# a 0 s body timeout makes every body a 408, a 0 s lease hands every batch out
# again at once, and a 0 s retry has a failing writer retry without a pause.
COUNT = Number()
# A day at most: far longer ones mean nothing, and past about 1e9 s they overflow
# socket timeouts, sleeps and Redis expiries instead of failing here.
DAY = 86400
SECONDS = Number(seconds=True, most=DAY)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration; every field has a default that gives dev mode."""

    # Dev mode keeps the database, the queue and the spool in SQLite files here.
    data_dir: str = "data"
    # Empty means a SQLite file in data_dir; postgresql://... switches to PostgreSQL.
    # Out of repr, as the secret key is: a URL may hold a password.
    database_url: str = dataclasses.field(default="", repr=False)
    # Empty means reads go to DATABASE_URL; a PostgreSQL streaming replica of it serves the
    # reads of stored logs (models.using_replica) while writes stay on the primary.
    database_read_url: str = dataclasses.field(default="", repr=False)
    # Empty means the SQLite-backed queue in data_dir; redis://... switches to Redis (redis_url.py: its forms).
    redis_url: str = dataclasses.field(default="", repr=False)
    # POST /logs answers 202 only once this many Redis replicas have the records (Redis WAIT), within the timeout.
    redis_replicas: int = 0
    redis_replicas_timeout_seconds: float = 0.5
    log_dir: str = "logs"
    storage: tuple = WRITERS
    max_body_bytes: int = 1024 * 1024
    max_decoded_bytes: int = 10 * 1024 * 1024
    max_records: int = 1000
    max_message_bytes: int = 64 * 1024
    # A record's JSON as stored (message, metadata and the rest together), as
    # Loki bounds a line; four times this as sent is refused unread.
    max_record_bytes: int = 256 * 1024
    # Attributes and values (KeyValues, array and key-value list items) one
    # OTLP export may have converted, over all its records (otlp.Values).
    max_otlp_values: int = 262_144
    future_window_seconds: float = 3600.0
    # Days a timestamp may lie in the past; None: the project's retention (0: no bound).
    past_window_days: int = None
    # A request body must arrive within this time, or the request gets 408.
    body_timeout_seconds: float = 10.0
    # On PostgreSQL, a GET /logs query running longer is cancelled (422), so
    # reads cannot hold the database that ingestion writes to (0: no limit).
    read_timeout_seconds: float = 10.0
    # How long a web process trusts a cached key lookup: the delay before a
    # revoked key or a deactivated project is refused.
    key_cache_seconds: float = 10.0
    # A claimed batch not acknowledged within this time is handed out again.
    lease_seconds: float = 30.0
    # Each consumer thread holds about ten times this in Python objects while writing.
    batch_bytes: int = 1024 * 1024
    # A consumer woken by a request waits this long before claiming, so the
    # requests arriving meanwhile share one write instead of one each.
    batch_wait_seconds: float = 0.1
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    retry_after_seconds: int = 5
    # Records waiting in one writer's queue before POST /logs answers 503; 0: no bound.
    max_queue: int = 1_000_000
    # Shards of each writer's queue in Redis (spool_redis.py), spread over a Redis Cluster's
    # nodes and drained in parallel; dev mode's SQLite spool has one whatever this says.
    spool_shards: int = 1
    # Records per second per project (0: no limit), and the burst above it.
    rate_limit: int = 0
    rate_burst: int = 0
    # Days of logs kept for projects without their own retention (0: keep forever).
    retention_days: int = 30
    # Bytes of stored logs one page of GET /logs (or of tail) holds at most; a page
    # stops early, with a cursor, once past it.
    max_page_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    # Signs the viewer's cookies; empty: dev mode generates one in data_dir,
    # production (DATABASE_URL set) refuses to start the web process.
    secret_key: str = dataclasses.field(default="", repr=False)
    # Where people open the viewer: alert notifications link to pages under it.
    public_url: str = "http://127.0.0.1:5000"
    # Alerts may notify loopback and link-local addresses (cloud metadata) only when this is set.
    allow_private_webhooks: bool = False
    # smtp://user:password@host:587 (STARTTLS) or smtps://...:465 (TLS), for email alerts.
    smtp_url: str = dataclasses.field(default="", repr=False)
    smtp_from: str = "logflow@localhost"
    # Each attempt to deliver a notification has this long to connect and be answered.
    notify_timeout_seconds: float = 10.0
    # A notification not delivered within this time is given up, and shown as failed.
    notify_give_up_seconds: float = 86400.0

    @property
    def dev_mode(self):
        """True when neither PostgreSQL nor Redis is configured."""
        return not self.database_url and not self.redis_url

    @property
    def sqlite_path(self):
        return os.path.join(self.data_dir, "logflow.db")

    def replace(self, **changes):
        """A copy with some fields changed (used by tests and the app factory)."""
        if isinstance(changes.get("storage"), str):
            changes["storage"] = parse_storage(changes["storage"])
        return dataclasses.replace(self, **changes)


# The schemes models.bind_database opens as PostgreSQL.
POSTGRESQL_URL = Url(("postgresql", "postgres", "postgresql+pool", "postgres+pool"))

# Environment variable → (field, conversion). docs/configuration.md and .env.example list them all.
ENVIRONMENT = {
    "LOGFLOW_DATA_DIR": ("data_dir", str),
    "DATABASE_URL": ("database_url", POSTGRESQL_URL),
    "DATABASE_READ_URL": ("database_read_url", POSTGRESQL_URL),
    # The forms redis_url.connect reads.
    "REDIS_URL": ("redis_url", parse_redis_url),
    "LOGFLOW_REDIS_REPLICAS": ("redis_replicas", Number(zero="no wait")),
    # Below the spool's 5 s socket timeout (spool_redis.py), which would cut a longer WAIT short.
    "LOGFLOW_REDIS_REPLICAS_TIMEOUT_SECONDS": ("redis_replicas_timeout_seconds", Number(seconds=True, most=4)),
    "LOGFLOW_LOG_DIR": ("log_dir", str),
    "LOGFLOW_STORAGE": ("storage", parse_storage),
    "LOGFLOW_MAX_BODY_BYTES": ("max_body_bytes", COUNT),
    "LOGFLOW_MAX_DECODED_BYTES": ("max_decoded_bytes", COUNT),
    "LOGFLOW_MAX_RECORDS": ("max_records", COUNT),
    "LOGFLOW_MAX_MESSAGE_BYTES": ("max_message_bytes", COUNT),
    "LOGFLOW_MAX_RECORD_BYTES": ("max_record_bytes", COUNT),
    "LOGFLOW_MAX_OTLP_VALUES": ("max_otlp_values", COUNT),
    "LOGFLOW_FUTURE_WINDOW_SECONDS": ("future_window_seconds",
                                      Number(seconds=True, zero="no timestamp ahead of the clock")),
    "LOGFLOW_PAST_WINDOW_DAYS": ("past_window_days", Number(zero="no bound", most=MAX_RETENTION_DAYS)),
    "LOGFLOW_BODY_TIMEOUT_SECONDS": ("body_timeout_seconds", SECONDS),
    # PostgreSQL's statement_timeout holds at most 2^31 - 1 ms; past it every read would fail.
    "LOGFLOW_READ_TIMEOUT_SECONDS": ("read_timeout_seconds",
                                     Number(seconds=True, zero="no limit", most=2147483)),
    "LOGFLOW_KEY_CACHE_SECONDS": ("key_cache_seconds", Number(seconds=True, zero="no cache", most=DAY)),
    "LOGFLOW_LEASE_SECONDS": ("lease_seconds", SECONDS),
    "LOGFLOW_BATCH_BYTES": ("batch_bytes", COUNT),
    "LOGFLOW_BATCH_WAIT_SECONDS": ("batch_wait_seconds", Number(seconds=True, zero="no wait", most=DAY)),
    "LOGFLOW_RETRY_BASE_SECONDS": ("retry_base_seconds", SECONDS),
    "LOGFLOW_RETRY_MAX_SECONDS": ("retry_max_seconds", SECONDS),
    # Retry-After 0 would have clients retry at once, all through an outage.
    "LOGFLOW_RETRY_AFTER_SECONDS": ("retry_after_seconds", COUNT),
    "LOGFLOW_MAX_QUEUE": ("max_queue", Number(zero="no bound")),
    # Every consumer's sweep wakes each shard of each writer once a minute: thousands would be a flood.
    "LOGFLOW_SPOOL_SHARDS": ("spool_shards", Number(most=256)),
    "LOGFLOW_RATE_LIMIT": ("rate_limit", Number(zero="no limit")),
    "LOGFLOW_RATE_BURST": ("rate_burst", Number(zero="one second's worth")),
    # A negative number would put the cutoff after today, and prune today's logs.
    "LOGFLOW_RETENTION_DAYS": ("retention_days", Number(zero="keep forever", most=MAX_RETENTION_DAYS)),
    "LOGFLOW_MAX_PAGE_BYTES": ("max_page_bytes", COUNT),
    "LOGFLOW_LOG_LEVEL": ("log_level", parse_log_level),
    "LOGFLOW_SECRET_KEY": ("secret_key", parse_secret),
    "LOGFLOW_PUBLIC_URL": ("public_url", Url(("http", "https"))),
    "LOGFLOW_ALLOW_PRIVATE_WEBHOOKS": ("allow_private_webhooks", parse_flag),
    "LOGFLOW_SMTP_URL": ("smtp_url", Url(("smtp", "smtps"))),
    "LOGFLOW_SMTP_FROM": ("smtp_from", parse_address),
    "LOGFLOW_NOTIFY_TIMEOUT_SECONDS": ("notify_timeout_seconds", Number(seconds=True, most=600)),
    "LOGFLOW_NOTIFY_GIVE_UP_SECONDS": ("notify_give_up_seconds", Number(seconds=True, most=7 * DAY)),
}


def load(environ=None):
    """Settings from the environment, after loading `.env` if there is one."""
    if environ is None:
        load_dotenv()
        environ = os.environ
    values = {}
    for variable, (field, convert) in ENVIRONMENT.items():
        raw = environ.get(variable, "").strip()
        if raw:
            try:
                values[field] = convert(raw)
            except ValueError as error:
                raise InvalidSetting("%s: %s" % (variable, error)) from None
    if values.get("redis_replicas") and values.get("redis_url", "").partition("://")[0] in redis_url.CLUSTER_SCHEMES:
        # WAIT counts the replicas of the node a connection is on; a push's pipeline to the cluster has no such node.
        raise InvalidSetting("LOGFLOW_REDIS_REPLICAS: not supported with a Redis Cluster in REDIS_URL (use Redis"
                             " Sentinel for acknowledged replication, or set it to 0)")
    if values.get("database_read_url") and not values.get("database_url"):
        # A replica of SQLite does not exist; reads would go where no writer writes.
        raise InvalidSetting("DATABASE_READ_URL: needs DATABASE_URL, the PostgreSQL primary it is a replica of;"
                             " without DATABASE_URL, LogFlow stores logs in SQLite")
    return Settings(**values)
