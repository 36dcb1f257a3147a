"""Session services on loopback (PostgreSQL here, others in service_fixtures) and per-test state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import psycopg
import pytest

import actors
import tests.support.actors  # noqa: F401  (declares the test actors on the broker)
from actors.middleware import actor_infos
from jobs import store
from jobs.broker import StudioBroker
from settings import Settings
from tests.support.db import build_template, cloned_database, server_url

pytest_plugins = ["tests.support.service_fixtures"]


def _register_actors(conn: psycopg.Connection[Any]) -> None:
    store.register_actors(conn, actor_infos(actors.broker))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PostgreSQL server with a migrated template database."""
    url = server_url(tmp_path_factory.mktemp("postgres"))
    build_template(url, _register_actors)
    return url


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh migrated database for this test."""
    with cloned_database(pg_server) as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _rebind(actor_list: list[dramatiq.Actor[Any, Any]], broker: dramatiq.Broker) -> None:
    for actor in actor_list:
        actor.broker = broker
        broker.declare_actor(actor)


@pytest.fixture
def test_settings(database_url: str) -> Settings:
    """Settings pointing at the test database."""
    return Settings(database_url=database_url)


@pytest.fixture
def broker(test_settings: Settings) -> Iterator[StudioBroker]:
    """A real broker on the test database, with every declared actor bound to it."""
    previous = dramatiq.get_broker()
    declared = list(previous.actors.values())
    fresh = actors.broker_from_settings(test_settings)
    _rebind(declared, fresh)
    dramatiq.set_broker(fresh)
    try:
        yield fresh
    finally:
        fresh.close()
        _rebind(declared, previous)
        dramatiq.set_broker(previous)


@pytest.fixture
def worker(broker: StudioBroker, test_settings: Settings) -> Iterator[dramatiq.Worker]:
    """A running Dramatiq worker (WORKER_CONCURRENCY threads) on the test broker."""
    broker.emit_after("process_boot")  # as Dramatiq's CLI does: starts the time-limit watchdog
    running = dramatiq.Worker(broker, worker_threads=test_settings.worker_concurrency,
                              worker_timeout=100)
    running.start()
    try:
        yield running
    finally:
        running.stop()
