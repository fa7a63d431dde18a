"""Every LogFlow setting, read in one place from the environment (and `.env`)."""
import dataclasses
import os

from dotenv import load_dotenv

WRITERS = ("db", "file")


class InvalidSetting(ValueError):
    """A variable of the environment that load() cannot use; the message is "VARIABLE: reason"."""


def parse_storage(value):
    """Turn "db", "file" or "db,file" into a tuple of writer names, in a fixed order."""
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = names - set(WRITERS)
    if unknown or not names:
        raise ValueError("storage must be db, file or db,file, not %r" % value)
    return tuple(name for name in WRITERS if name in names)


def parse_days(value):
    """A number of days kept, 0 (forever) or more: a negative one would put the cutoff after today."""
    days = int(value)
    if days < 0:
        raise ValueError("days must be 0 (keep forever) or more, not %d" % days)
    return days


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration; every field has a default that gives dev mode."""

    # Dev mode keeps the database, the queue and the spool in SQLite files here.
    data_dir: str = "data"
    # Empty means a SQLite file in data_dir; postgresql://... switches to PostgreSQL.
    database_url: str = ""
    # Empty means the SQLite-backed queue in data_dir; redis://... switches to Redis.
    redis_url: str = ""
    log_dir: str = "logs"
    storage: tuple = WRITERS
    max_body_bytes: int = 1024 * 1024
    max_decoded_bytes: int = 10 * 1024 * 1024
    max_records: int = 1000
    max_message_bytes: int = 64 * 1024
    future_window_seconds: float = 3600.0
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
    # Records per second per project (0: no limit), and the burst above it.
    rate_limit: int = 0
    rate_burst: int = 0
    # Days of logs kept for projects without their own retention (0: keep forever).
    retention_days: int = 30
    log_level: str = "INFO"

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


# Environment variable → (field, type). The README and .env.example list them all.
ENVIRONMENT = {
    "LOGFLOW_DATA_DIR": ("data_dir", str),
    "DATABASE_URL": ("database_url", str),
    "REDIS_URL": ("redis_url", str),
    "LOGFLOW_LOG_DIR": ("log_dir", str),
    "LOGFLOW_STORAGE": ("storage", parse_storage),
    "LOGFLOW_MAX_BODY_BYTES": ("max_body_bytes", int),
    "LOGFLOW_MAX_DECODED_BYTES": ("max_decoded_bytes", int),
    "LOGFLOW_MAX_RECORDS": ("max_records", int),
    "LOGFLOW_MAX_MESSAGE_BYTES": ("max_message_bytes", int),
    "LOGFLOW_FUTURE_WINDOW_SECONDS": ("future_window_seconds", float),
    "LOGFLOW_BODY_TIMEOUT_SECONDS": ("body_timeout_seconds", float),
    "LOGFLOW_READ_TIMEOUT_SECONDS": ("read_timeout_seconds", float),
    "LOGFLOW_KEY_CACHE_SECONDS": ("key_cache_seconds", float),
    "LOGFLOW_LEASE_SECONDS": ("lease_seconds", float),
    "LOGFLOW_BATCH_BYTES": ("batch_bytes", int),
    "LOGFLOW_BATCH_WAIT_SECONDS": ("batch_wait_seconds", float),
    "LOGFLOW_RETRY_BASE_SECONDS": ("retry_base_seconds", float),
    "LOGFLOW_RETRY_MAX_SECONDS": ("retry_max_seconds", float),
    "LOGFLOW_RETRY_AFTER_SECONDS": ("retry_after_seconds", int),
    "LOGFLOW_MAX_QUEUE": ("max_queue", int),
    "LOGFLOW_RATE_LIMIT": ("rate_limit", int),
    "LOGFLOW_RATE_BURST": ("rate_burst", int),
    "LOGFLOW_RETENTION_DAYS": ("retention_days", parse_days),
    "LOGFLOW_LOG_LEVEL": ("log_level", str),
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
    return Settings(**values)
