"""Settings: one place, documented defaults, clear errors."""
import pathlib
import re

import pytest

import config

EXAMPLE = pathlib.Path(__file__).parent.parent / ".env.example"


def test_env_example_lists_every_setting_with_its_default():
    text = EXAMPLE.read_text()
    listed = set(re.findall(r"^#? ?([A-Z_]+)=", text, re.M))
    assert listed == set(config.ENVIRONMENT)
    values = dict(line.split("=", 1) for line in text.splitlines()
                  if line and not line.startswith("#"))
    assert config.load(values) == config.Settings()


def test_no_settings_means_dev_mode():
    settings = config.load({})
    assert settings.dev_mode and settings.storage == ("db", "file")
    assert not config.load({"REDIS_URL": "redis://x"}).dev_mode


def test_values_are_converted_and_checked():
    settings = config.load({"LOGFLOW_STORAGE": "file, db", "LOGFLOW_MAX_RECORDS": "5"})
    assert settings.storage == ("db", "file") and settings.max_records == 5
    # InvalidSetting, a ValueError, is what manage.py turns into one line of error.
    with pytest.raises(config.InvalidSetting, match="^LOGFLOW_STORAGE: storage must be"):
        config.load({"LOGFLOW_STORAGE": "tape"})
    with pytest.raises(config.InvalidSetting, match="^LOGFLOW_MAX_RECORDS: "):
        config.load({"LOGFLOW_MAX_RECORDS": "many"})


def test_retention_days_cannot_be_negative():
    assert config.load({"LOGFLOW_RETENTION_DAYS": "0"}).retention_days == 0
    # -1 would put the cutoff tomorrow, and the next prune would delete today's logs.
    with pytest.raises(ValueError, match="LOGFLOW_RETENTION_DAYS"):
        config.load({"LOGFLOW_RETENTION_DAYS": "-1"})
