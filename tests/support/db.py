"""PostgreSQL for tests: one server per session, a migrated template, one clone per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from clients.postgres import embedded_url
from db.migrate import migrate

TEMPLATE = "studio_template"
_counter = itertools.count()

# Rows written by the test actors, so tests can see what ran, where and when.
TEST_TABLES = """
CREATE TABLE test_mark (
    key text NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def server_url(tmp_dir: Path) -> str:
    """TEST_DATABASE_URL when set, else an embedded server in tmp_dir."""
    return os.environ.get("TEST_DATABASE_URL") or embedded_url(tmp_dir / "pgdata")


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(with_dbname(url, "postgres"), autocommit=True)


def recreate_database(url: str, name: str, template: str | None = None) -> str:
    """Drop and create database name (optionally from template); returns its URL."""
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(create)
    return with_dbname(url, name)


def drop_database(url: str, name: str) -> None:
    """Drop database name, disconnecting whoever is still on it."""
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def build_template(url: str, register: Callable[[psycopg.Connection[Any]], None]) -> None:
    """A migrated database with the test tables and registered actors, to clone per test."""
    template_url = recreate_database(url, TEMPLATE)
    migrate(template_url)
    with psycopg.connect(template_url) as conn:
        conn.execute(TEST_TABLES)
        register(conn)


@contextmanager
def cloned_database(url: str) -> Iterator[str]:
    """A fresh clone of the template for one test."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    clone_url = recreate_database(url, name, template=TEMPLATE)
    try:
        yield clone_url
    finally:
        drop_database(url, name)
