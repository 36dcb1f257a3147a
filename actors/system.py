"""Actors of the job system itself."""

from __future__ import annotations

import dramatiq


@dramatiq.actor(actor_name="ping", queue_name="system", max_retries=0, time_limit=10_000)
def ping() -> None:
    """Does nothing: `studio ping` sends it to prove a worker is picking up jobs end to end."""
