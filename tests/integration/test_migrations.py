"""`studio migrate`: schema from empty equals the committed snapshot; reruns and races are safe."""

from __future__ import annotations

import uuid

import pytest

from db.migrate import migrate, pending_migrations
from db.snapshot import SNAPSHOT, dump_schema
from tests.support.db import drop_database, recreate_database
from tests.support.processes import run, start


@pytest.fixture
def empty_database_url(pg_server: str):
    name = f"empty_{uuid.uuid4().hex[:8]}"
    yield recreate_database(pg_server, name)
    drop_database(pg_server, name)


def test_migrating_an_empty_database_gives_the_committed_schema_snapshot(empty_database_url):
    migrate(empty_database_url)

    assert dump_schema(empty_database_url) == SNAPSHOT.read_text(), (
        "db/schema.sql is stale: regenerate it with `python -m db.snapshot URL > db/schema.sql`")


def test_migrating_twice_applies_nothing_the_second_time(empty_database_url):
    first = migrate(empty_database_url)
    second = migrate(empty_database_url)

    assert first == ["0001.broker", "0002.jobs"]
    assert second == []
    assert pending_migrations(empty_database_url) == []


def test_two_studio_migrate_processes_started_together_both_succeed(empty_database_url, tmp_path):
    env = {"DATABASE_URL": empty_database_url}
    racers = [start(["studio", "migrate"], tmp_path / f"m{i}.log", env) for i in range(3)]

    codes = [r.popen.wait(120) for r in racers]

    outputs = [r.output() for r in racers]
    assert codes == [0, 0, 0], outputs
    assert sum("applied 2 migration(s)" in o for o in outputs) == 1
    assert sum("up to date" in o for o in outputs) == 2
    assert dump_schema(empty_database_url) == SNAPSHOT.read_text()


def test_studio_migrate_registers_the_actors_for_sql_producers(empty_database_url):
    result = run(["studio", "migrate"], {"DATABASE_URL": empty_database_url})

    assert result.returncode == 0, result.stderr
    assert "registered actors: ping" in result.stdout
