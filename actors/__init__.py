"""Sets the broker from settings, then imports every actor module: `dramatiq actors` runs them all."""

from __future__ import annotations

import dramatiq

from actors.middleware import default_middleware
from clients.postgres import make_pool, url_resolver
from jobs.broker import StudioBroker, build_broker
from settings import Settings, get_settings


def broker_from_settings(settings: Settings) -> StudioBroker:
    """The broker every process uses; nothing connects until the first query."""
    pool = make_pool(url_resolver(settings.database_url, settings.embedded_pg_dir),
                     max_size=2 * settings.worker_concurrency + 16, name="studio-worker")
    middleware = default_middleware(
        pool, max_retries=settings.job_max_retries,
        time_limit_ms=settings.job_time_limit_s * 1000,
        retention_days=settings.job_retention_days)
    return build_broker(pool, poll_interval_s=settings.poll_interval_s,
                        heartbeat_ttl_s=settings.worker_heartbeat_ttl_s,
                        retention_days=settings.job_retention_days, middleware=middleware)


broker = broker_from_settings(get_settings())
dramatiq.set_broker(broker)

from actors import system  # noqa: E402,F401  (actor modules need the broker set first)
