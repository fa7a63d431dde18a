"""Settings: one place, documented defaults, clear errors."""
import pathlib
import re

import pytest

import config

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLE = ROOT / ".env.example"


def example_values(commented):
    """.env.example's VARIABLE=value lines; with `commented`, the commented-out examples too."""
    pattern = r"^# ?([A-Z_]+)=(.*)$" if commented else r"^([A-Z_]+)=(.*)$"
    return dict(re.findall(pattern, EXAMPLE.read_text(), re.M))


def test_env_example_lists_every_setting_with_its_default():
    listed = set(example_values(commented=False)) | set(example_values(commented=True))
    assert listed == set(config.ENVIRONMENT)
    assert config.load(example_values(commented=False)) == config.Settings()


def test_env_example_commented_examples_load():
    examples = example_values(commented=True)
    assert set(examples) == {"DATABASE_URL", "REDIS_URL", "LOGFLOW_PAST_WINDOW_DAYS"}
    settings = config.load(examples)
    assert (settings.database_url, settings.redis_url) == (examples["DATABASE_URL"], examples["REDIS_URL"])
    assert settings.past_window_days == int(examples["LOGFLOW_PAST_WINDOW_DAYS"])


def test_every_default_loads_as_itself():
    defaults = config.Settings()
    assert config.load({}) == defaults
    as_text = {}
    for variable, (field, _) in config.ENVIRONMENT.items():
        value = getattr(defaults, field)
        # None: not set (LOGFLOW_PAST_WINDOW_DAYS then follows the project's retention).
        as_text[variable] = ",".join(value) if isinstance(value, tuple) else "" if value is None else str(value)
    assert config.load(as_text) == defaults


def documented_settings():
    """docs/configuration.md's settings table: [(variables, defaults, meaning)], a row each."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \| ([^|]+) \| (.+) \|$", table, re.M)
    return [(re.findall(r"`([A-Z_]+)`", names), [cell.strip().strip("`") for cell in defaults.split(" / ")],
             meaning) for names, defaults, meaning in rows]


def test_the_documented_table_lists_every_setting_with_its_default_and_its_examples_load():
    rows = documented_settings()
    assert {name for names, _, _ in rows for name in names} == set(config.ENVIRONMENT)
    defaults = {name: default for names, values, _ in rows for name, default in zip(names, values)
                if not default.startswith("(")}  # "(SQLite in the data folder)": not set
    assert config.load(defaults) == config.Settings()
    for names, _, meaning in rows:
        for url in re.findall(r"`([a-z]+://[^`]*)`", meaning):
            assert getattr(config.load({names[0]: url}), config.ENVIRONMENT[names[0]][0]) == url


def test_no_settings_means_dev_mode():
    settings = config.load({})
    assert settings.dev_mode and settings.storage == ("db", "file")
    assert not config.load({"REDIS_URL": "redis://x"}).dev_mode


def test_values_are_converted():
    settings = config.load({"LOGFLOW_STORAGE": "file, db", "LOGFLOW_MAX_RECORDS": "5",
                            "LOGFLOW_BATCH_WAIT_SECONDS": "0.25", "LOGFLOW_LOG_LEVEL": "debug"})
    assert settings.storage == ("db", "file") and settings.max_records == 5
    assert settings.batch_wait_seconds == 0.25 and settings.log_level == "DEBUG"


@pytest.mark.parametrize("variable, value, field, expected", [
    # 0 where the code reads it as "off" or "forever".
    ("LOGFLOW_FUTURE_WINDOW_SECONDS", "0", "future_window_seconds", 0),
    ("LOGFLOW_READ_TIMEOUT_SECONDS", "0", "read_timeout_seconds", 0),
    ("LOGFLOW_KEY_CACHE_SECONDS", "0", "key_cache_seconds", 0),
    ("LOGFLOW_BATCH_WAIT_SECONDS", "0", "batch_wait_seconds", 0),
    ("LOGFLOW_MAX_QUEUE", "0", "max_queue", 0),
    ("LOGFLOW_SPOOL_SHARDS", "256", "spool_shards", 256),
    ("LOGFLOW_RATE_LIMIT", "0", "rate_limit", 0),
    ("LOGFLOW_RATE_BURST", "0", "rate_burst", 0),
    ("LOGFLOW_RETENTION_DAYS", "0", "retention_days", 0),
    ("LOGFLOW_PAST_WINDOW_DAYS", "0", "past_window_days", 0),
    ("LOGFLOW_PAST_WINDOW_DAYS", "36500", "past_window_days", 36500),
    ("LOGFLOW_MAX_RECORD_BYTES", "1", "max_record_bytes", 1),
    ("LOGFLOW_MAX_OTLP_VALUES", "1", "max_otlp_values", 1),
    ("LOGFLOW_MAX_PAGE_BYTES", "1", "max_page_bytes", 1),
    # The smallest values that work where 0 does not, and the largest.
    ("LOGFLOW_MAX_RECORDS", "1", "max_records", 1),
    ("LOGFLOW_BATCH_BYTES", "1", "batch_bytes", 1),
    ("LOGFLOW_RETRY_AFTER_SECONDS", "1", "retry_after_seconds", 1),
    ("LOGFLOW_LEASE_SECONDS", "0.5", "lease_seconds", 0.5),
    ("LOGFLOW_RETRY_BASE_SECONDS", "0.01", "retry_base_seconds", 0.01),
    ("LOGFLOW_READ_TIMEOUT_SECONDS", "2147483", "read_timeout_seconds", 2147483),
    ("LOGFLOW_RETENTION_DAYS", "36500", "retention_days", 36500),
    ("LOGFLOW_BODY_TIMEOUT_SECONDS", "86400", "body_timeout_seconds", 86400),
    ("LOGFLOW_BATCH_WAIT_SECONDS", "86400", "batch_wait_seconds", 86400),
    # models.bind_database opens the plain schemes as these; earlier versions took them too.
    ("DATABASE_URL", "postgresql+pool://logflow@db/logflow", "database_url", "postgresql+pool://logflow@db/logflow"),
    ("LOGFLOW_MAX_BODY_BYTES", "1_000_000", "max_body_bytes", 1_000_000),
    # Every scheme the database and Redis are opened with.
    ("DATABASE_URL", "postgres://logflow@db/logflow", "database_url", "postgres://logflow@db/logflow"),
    ("REDIS_URL", "rediss://:secret@cache:6380/1", "redis_url", "rediss://:secret@cache:6380/1"),
    ("REDIS_URL", "unix:///run/redis/redis.sock?db=2", "redis_url", "unix:///run/redis/redis.sock?db=2"),
    ("REDIS_URL", "rediss+sentinel://:secret@h1,h2:26380/mymaster/1?sentinel_password=other", "redis_url",
     "rediss+sentinel://:secret@h1,h2:26380/mymaster/1?sentinel_password=other"),
    ("LOGFLOW_REDIS_REPLICAS_TIMEOUT_SECONDS", "4", "redis_replicas_timeout_seconds", 4),
    ("LOGFLOW_LOG_LEVEL", "Warning", "log_level", "WARNING"),
])
def test_values_at_the_edges_of_their_range_load(variable, value, field, expected):
    assert getattr(config.load({variable: value}), field) == expected


REFUSALS = [
    # Sizes and counts: 0 would refuse every request (or, for batches, never claim one).
    ("LOGFLOW_MAX_BODY_BYTES", "0", "must be a whole number of 1 or more, not 0"),
    ("LOGFLOW_MAX_DECODED_BYTES", "-1", "must be a whole number of 1 or more, not -1"),
    ("LOGFLOW_MAX_RECORDS", "-5", "must be a whole number of 1 or more, not -5"),
    ("LOGFLOW_MAX_RECORDS", "0", "must be a whole number of 1 or more, not 0"),
    ("LOGFLOW_MAX_MESSAGE_BYTES", "0", "must be a whole number of 1 or more, not 0"),
    ("LOGFLOW_MAX_RECORD_BYTES", "0", "must be a whole number of 1 or more, not 0"),
    ("LOGFLOW_MAX_OTLP_VALUES", "0", "must be a whole number of 1 or more, not 0"),
    ("LOGFLOW_MAX_PAGE_BYTES", "-1", "must be a whole number of 1 or more, not -1"),
    ("LOGFLOW_PAST_WINDOW_DAYS", "-1", "must be a whole number from 0 (no bound) to 36500, not -1"),
    ("LOGFLOW_BATCH_BYTES", "0", "must be a whole number of 1 or more, not 0"),
    ("LOGFLOW_RETRY_AFTER_SECONDS", "0", "must be a whole number of 1 or more, not 0"),
    # Where 0 means something, below it does not.
    ("LOGFLOW_MAX_QUEUE", "-1", "must be a whole number, 0 (no bound) or more, not -1"),
    ("LOGFLOW_SPOOL_SHARDS", "0", "must be a whole number from 1 to 256, not 0"),
    ("LOGFLOW_RATE_LIMIT", "-100", "must be a whole number, 0 (no limit) or more, not -100"),
    ("LOGFLOW_RATE_BURST", "-1", "must be a whole number, 0 (one second's worth) or more, not -1"),
    ("LOGFLOW_RETENTION_DAYS", "-1", "must be a whole number from 0 (keep forever) to 36500, not -1"),
    ("LOGFLOW_RETENTION_DAYS", "1000000", "must be a whole number from 0 (keep forever) to 36500, not 1000000"),
    # Durations.
    ("LOGFLOW_FUTURE_WINDOW_SECONDS", "-60",
     "must be a number of seconds, 0 (no timestamp ahead of the clock) or more, not -60"),
    ("LOGFLOW_BODY_TIMEOUT_SECONDS", "0", "must be a number of seconds above 0 and at most 86400, not 0"),
    ("LOGFLOW_READ_TIMEOUT_SECONDS", "-1", "must be a number of seconds from 0 (no limit) to 2147483, not -1"),
    ("LOGFLOW_READ_TIMEOUT_SECONDS", "2592000",
     "must be a number of seconds from 0 (no limit) to 2147483, not 2592000"),
    ("LOGFLOW_KEY_CACHE_SECONDS", "-10", "must be a number of seconds from 0 (no cache) to 86400, not -10"),
    ("LOGFLOW_LEASE_SECONDS", "0", "must be a number of seconds above 0 and at most 86400, not 0"),
    ("LOGFLOW_BATCH_WAIT_SECONDS", "-1", "must be a number of seconds from 0 (no wait) to 86400, not -1"),
    ("LOGFLOW_RETRY_BASE_SECONDS", "0", "must be a number of seconds above 0 and at most 86400, not 0"),
    ("LOGFLOW_RETRY_MAX_SECONDS", "-60", "must be a number of seconds above 0 and at most 86400, not -60"),
    # NaN compares false to every bound, infinity overflows sleeps and timeouts.
    ("LOGFLOW_BATCH_WAIT_SECONDS", "nan", "must be a number of seconds from 0 (no wait) to 86400, not nan"),
    ("LOGFLOW_LEASE_SECONDS", "inf", "must be a number of seconds above 0 and at most 86400, not inf"),
    ("LOGFLOW_KEY_CACHE_SECONDS", "-Infinity", "must be a number of seconds from 0 (no cache) to 86400, not -Infinity"),
    ("LOGFLOW_BODY_TIMEOUT_SECONDS", "1e400", "must be a number of seconds above 0 and at most 86400, not 1e400"),
    # Finite, but a socket timeout of 1e10 s overflows time_t: every POST would be a 500.
    ("LOGFLOW_BODY_TIMEOUT_SECONDS", "1e10", "must be a number of seconds above 0 and at most 86400, not 1e10"),
    ("LOGFLOW_RETRY_MAX_SECONDS", "86401", "must be a number of seconds above 0 and at most 86400, not 86401"),
    ("LOGFLOW_KEY_CACHE_SECONDS", "1e12", "must be a number of seconds from 0 (no cache) to 86400, not 1e12"),
    # Not numbers at all, in plain words instead of int()'s and float()'s.
    ("LOGFLOW_MAX_RECORDS", "many", "must be a whole number of 1 or more, not 'many'"),
    ("LOGFLOW_MAX_RECORDS", "1.5", "must be a whole number of 1 or more, not '1.5'"),
    ("LOGFLOW_RETENTION_DAYS", "30d", "must be a whole number from 0 (keep forever) to 36500, not '30d'"),
    ("LOGFLOW_BATCH_WAIT_SECONDS", "abc", "must be a number of seconds from 0 (no wait) to 86400, not 'abc'"),
    ("LOGFLOW_LEASE_SECONDS", "30s", "must be a number of seconds above 0 and at most 86400, not '30s'"),
    # Schemes that peewee or redis-py would open otherwise, or fail on, without naming the variable;
    # only the scheme is repeated, the rest may hold a password.
    ("DATABASE_URL", "mysql://logflow:secret@db/logflow", "must start with postgresql://, postgres://, postgresql+pool:// or postgres+pool://, not mysql://"),
    ("DATABASE_URL", "sqlite:///data/logflow.db", "must start with postgresql://, postgres://, postgresql+pool:// or postgres+pool://, not sqlite://"),
    ("DATABASE_URL", "logflow:secret@db:5432/logflow",
     "must start with postgresql://, postgres://, postgresql+pool:// or postgres+pool://; this value has no scheme"),
    ("DATABASE_READ_URL", "mysql://logflow:secret@replica/logflow", "must start with postgresql://, postgres://, postgresql+pool:// or postgres+pool://, not mysql://"),
    ("REDIS_URL", "http://x", "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://, not http://"),
    ("REDIS_URL", "127.0.0.1:6379", "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://; this value has no scheme"),
    ("REDIS_URL", ":secret@cache://x", "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://; this value has no scheme"),
    # A Sentinel URL without its service name (tests/test_sentinel.py has the others).
    ("REDIS_URL", "redis+sentinel://:secret@h1:26379,h2:26379",
     "a Sentinel URL names the primary's service after its hosts:"
     " redis+sentinel://[:password@]host:26379[,host:26379...]/service[/db]"),
    ("LOGFLOW_REDIS_REPLICAS", "-1", "must be a whole number, 0 (no wait) or more, not -1"),
    # WAIT 0 ms waits forever; past the connections' 5 s socket timeout the wait is cut short.
    ("LOGFLOW_REDIS_REPLICAS_TIMEOUT_SECONDS", "0", "must be a number of seconds above 0 and at most 4, not 0"),
    ("LOGFLOW_REDIS_REPLICAS_TIMEOUT_SECONDS", "5", "must be a number of seconds above 0 and at most 4, not 5"),
    # A secret short enough to guess; its value is never repeated, only its length.
    ("LOGFLOW_SECRET_KEY", "hunter2", "must be at least 32 characters long, not 7 (make one with:"
     " python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"),
    ("LOGFLOW_PUBLIC_URL", "logs.example.com", "must start with http:// or https://; this value has no scheme"),
    ("LOGFLOW_SMTP_URL", "mail.example.com:587", "must start with smtp:// or smtps://; this value has no scheme"),
    ("LOGFLOW_NOTIFY_TIMEOUT_SECONDS", "0", "must be a number of seconds above 0 and at most 600, not 0"),
    ("LOGFLOW_NOTIFY_GIVE_UP_SECONDS", "1e9", "must be a number of seconds above 0 and at most 604800, not 1e9"),
    # Words.
    ("LOGFLOW_ALLOW_PRIVATE_WEBHOOKS", "sure", "must be 1 or 0 (true/false, yes/no), not 'sure'"),
    ("LOGFLOW_SMTP_FROM", "LogFlow", "must be an email address such as logflow@example.com, not 'LogFlow'"),
    ("LOGFLOW_STORAGE", "tape", "storage must be db, file or db,file, not 'tape'"),
    ("LOGFLOW_LOG_LEVEL", "verbose", "must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not 'verbose'"),
]


@pytest.mark.parametrize("variable, value, reason", REFUSALS)
def test_a_setting_that_cannot_work_is_refused_naming_it(variable, value, reason):
    # InvalidSetting, a ValueError, is what manage.py turns into one line of error.
    with pytest.raises(config.InvalidSetting) as refused:
        config.load({variable: value})
    assert str(refused.value) == "%s: %s" % (variable, reason)


def test_replicas_to_wait_for_are_refused_on_a_redis_cluster():
    # WAIT counts one node's replicas; a cluster's push has no one node to ask.
    with pytest.raises(config.InvalidSetting) as refused:
        config.load({"REDIS_URL": "redis+cluster://h1:7000,h2:7001/", "LOGFLOW_REDIS_REPLICAS": "1"})
    assert str(refused.value).startswith("LOGFLOW_REDIS_REPLICAS: not supported with a Redis Cluster")
    assert config.load({"REDIS_URL": "redis+cluster://h1:7000/", "LOGFLOW_REDIS_REPLICAS": "0"}).redis_replicas == 0


def test_a_read_replica_needs_a_postgresql_primary():
    # Without DATABASE_URL the logs are in SQLite, which no PostgreSQL replica copies.
    with pytest.raises(config.InvalidSetting) as refused:
        config.load({"DATABASE_READ_URL": "postgresql://logflow@replica/logflow"})
    assert str(refused.value).startswith("DATABASE_READ_URL: needs DATABASE_URL")
    settings = config.load({"DATABASE_URL": "postgresql://logflow@primary/logflow",
                            "DATABASE_READ_URL": "postgresql://logflow@replica/logflow"})
    assert settings.database_read_url == "postgresql://logflow@replica/logflow"


def test_every_setting_but_the_folders_has_a_refusal_tested():
    tested = {variable for variable, _, _ in REFUSALS}
    assert tested == set(config.ENVIRONMENT) - {"LOGFLOW_DATA_DIR", "LOGFLOW_LOG_DIR"}
