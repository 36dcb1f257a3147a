"""The benchmark's one actor: `studio worker bench.noop_actors` runs it."""

from __future__ import annotations

import dramatiq

import actors  # noqa: F401  (sets the broker)


@dramatiq.actor(actor_name="bench-noop", queue_name="bench")
def noop() -> None:
    """Does nothing, so the benchmark measures the job system alone."""
