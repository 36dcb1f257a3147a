"""Actors used by the tests: each leaves marks in test_mark so tests see what ran."""

from __future__ import annotations

import os
import time

import dramatiq

import actors  # noqa: F401  (sets the broker)
from jobs.errors import PermanentError, RateLimited

FAST_BACKOFF = {"min_backoff": 300, "max_backoff": 5_000}


def mark(key: str) -> int:
    """Record that key ran now in this process; returns how many times key ran before."""
    pool = dramatiq.get_broker().pool  # type: ignore[attr-defined]
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM test_mark WHERE key = %s", (key,)).fetchone()
        conn.execute("INSERT INTO test_mark (key, pid) VALUES (%s, %s)", (key, os.getpid()))
    return int(row[0]) if row else 0


@dramatiq.actor(actor_name="test-record", queue_name="test")
def record(key: str) -> None:
    """Leaves one mark."""
    mark(key)


@dramatiq.actor(actor_name="test-sleep", queue_name="test", max_retries=0)
def sleep_then_record(key: str, seconds: float) -> None:
    """Marks its start, sleeps, marks its end."""
    mark(key)
    time.sleep(seconds)
    mark(key + ":done")


@dramatiq.actor(actor_name="test-stall-first-run", queue_name="test", time_limit=120_000)
def stall_first_run(key: str) -> None:
    """The first run hangs (to be killed); any later run finishes at once."""
    if mark(key) == 0:
        time.sleep(110)
    mark(key + ":done")


@dramatiq.actor(actor_name="test-always-fails", queue_name="test", max_retries=2, **FAST_BACKOFF)
def always_fails(key: str) -> None:
    """Raises an ordinary exception every time."""
    mark(key)
    raise RuntimeError(f"boom for {key}")


@dramatiq.actor(actor_name="test-permanent", queue_name="test", max_retries=5, **FAST_BACKOFF)
def permanent_failure(key: str) -> None:
    """Raises a PermanentError: bad input that no retry can fix."""
    mark(key)
    raise PermanentError(f"experiment {key} has no 'model' column (row 1, column C)")


@dramatiq.actor(actor_name="test-rate-limited", queue_name="test", max_retries=3, **FAST_BACKOFF)
def rate_limited_once(key: str, retry_after_s: float) -> None:
    """The first run is told to come back after retry_after_s; the second succeeds."""
    if mark(key) == 0:
        raise RateLimited(retry_after_s)


@dramatiq.actor(actor_name="test-too-slow", queue_name="test", max_retries=0, time_limit=500)
def too_slow(key: str) -> None:
    """Runs past its 0.5 s time limit."""
    mark(key)
    for _ in range(100):  # the limit is delivered between bytecodes, so sleep in small steps
        time.sleep(0.05)
    mark(key + ":done")


@dramatiq.actor(actor_name="test-mark-then-sleep", queue_name="test", max_retries=0)
def mark_then_sleep(key: str, seconds: float) -> None:
    """Marks its start, then only sleeps: its end needs no database."""
    mark(key)
    time.sleep(seconds)
