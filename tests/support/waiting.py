"""Bounded waiting on observable outcomes, and reads of the job history."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

T = TypeVar("T")


def wait_for(probe: Callable[[], T], *, timeout_s: float = 20.0, every_s: float = 0.05,
              what: str = "condition") -> T:
    """Call probe until it returns something truthy; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def job(url: str, message_id: str) -> dict[str, Any] | None:
    """The studio.job row of a message, or None."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM studio.job WHERE message_id = %s",
                            (uuid.UUID(message_id),)).fetchone()


def attempts(url: str, message_id: str) -> list[dict[str, Any]]:
    """The attempts of a message, oldest first."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM studio.job_attempt WHERE message_id = %s "
                            "ORDER BY attempt", (uuid.UUID(message_id),)).fetchall()


def wait_for_status(url: str, message_id: str, status: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until the job reaches status; returns its row."""
    def probe() -> dict[str, Any] | None:
        row = job(url, message_id)
        return row if row and row["status"] == status else None
    return wait_for(probe, timeout_s=timeout_s, what=f"job {message_id} to be {status}")


def marks(url: str, key: str) -> list[dict[str, Any]]:
    """The marks test actors left under key, oldest first."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM test_mark WHERE key = %s ORDER BY at", (key,)).fetchall()
