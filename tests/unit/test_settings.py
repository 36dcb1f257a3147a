"""Settings: defaults, the Graphile Worker aliases, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from settings import Settings
from tests.support.processes import run

WORKER_VARS = ("WORKER_CONCURRENCY", "WORKER_POLL_INTERVAL", "GRAPHILE_WORKER_CONCURRENCY",
               "GRAPHILE_WORKER_POLL_INTERVAL")


@pytest.fixture
def clean_env(monkeypatch):
    for name in WORKER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_concurrency_defaults_to_5_and_poll_interval_to_1000_ms(clean_env):
    settings = Settings()

    assert settings.worker_concurrency == 5
    assert settings.worker_poll_interval == 1000
    assert settings.poll_interval_s == 1.0


def test_the_graphile_worker_variable_names_are_accepted(clean_env):
    clean_env.setenv("GRAPHILE_WORKER_CONCURRENCY", "12")
    clean_env.setenv("GRAPHILE_WORKER_POLL_INTERVAL", "250")

    settings = Settings()

    assert (settings.worker_concurrency, settings.worker_poll_interval) == (12, 250)


def test_the_new_name_wins_over_the_graphile_alias(clean_env):
    clean_env.setenv("WORKER_CONCURRENCY", "3")
    clean_env.setenv("GRAPHILE_WORKER_CONCURRENCY", "9")

    assert Settings().worker_concurrency == 3


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("WORKER_CONCURRENCY", "five", "expected an integer from 1 to 256"),
    ("GRAPHILE_WORKER_CONCURRENCY", "0", "expected an integer from 1 to 256"),
    ("WORKER_POLL_INTERVAL", "1s", "expected an integer number of milliseconds"),
    ("DATABASE_URL", "mysql://db/x", "expected a PostgreSQL URL"),
    ("JOB_RETENTION_DAYS", "-1", "expected a number of days greater than 0"),
])
def test_a_bad_value_stops_the_worker_with_one_line_naming_the_variable(name, value, expected):
    result = run(["studio", "worker"], {name: value}, timeout_s=30)

    assert result.returncode == 2
    assert result.stderr.startswith(f"invalid setting {name}={value!r}: {expected}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_a_secret_value_is_not_echoed_in_the_error(clean_env):
    result = run(["studio", "migrate"], {"SECRET_KEY": "too-short-to-be-safe"}, timeout_s=30)

    assert result.returncode == 2
    assert "too-short" not in result.stderr
    assert "SECRET_KEY" in result.stderr
