"""Apply the numbered SQL migrations, safely when several processes migrate at once."""

from __future__ import annotations

from pathlib import Path

import psycopg
from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Every migrator takes this session lock first, so concurrent runs queue up instead of racing
# on yoyo's own bookkeeping tables; a crashed migrator's lock dies with its connection.
LOCK_KEY = 7_421_003_117


def yoyo_url(url: str) -> str:
    """yoyo names the psycopg-3 driver in the scheme."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    raise ValueError(f"not a PostgreSQL URL: {url}")


def migrate(url: str) -> list[str]:
    """Apply every pending migration; returns the ids applied (empty when up to date)."""
    with psycopg.connect(url, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        backend = get_backend(yoyo_url(url))
        try:
            pending = backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))
            with backend.lock():
                backend.apply_migrations(pending)
            return [m.id for m in pending]
        finally:
            backend.connection.close()


def pending_migrations(url: str) -> list[str]:
    """Ids of migrations not yet applied."""
    backend = get_backend(yoyo_url(url))
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))]
    finally:
        backend.connection.close()
