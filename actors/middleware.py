"""Cross-cutting job behaviour: retry policy by error kind, and the job and attempt history."""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

import dramatiq
from dramatiq.errors import Retry
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from clients.postgres import ForkSafePool
from jobs import store
from jobs.broker import StudioBroker
from jobs.errors import PermanentError, RateLimited

logger = logging.getLogger(__name__)

RETENTION_SWEEP_S = 600.0


class StudioRetries(Retries):
    """Dramatiq's exponential-backoff retries, plus: PermanentError is never retried, RateLimited
    is retried after exactly the delay the other side asked for, and the retry is written in the
    same transaction as the acknowledgement."""

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if isinstance(exception, PermanentError):
            message.options["traceback"] = traceback.format_exc(limit=30)
            message.fail()
            return
        if isinstance(exception, RateLimited):
            exception = Retry(str(exception), delay=round(exception.retry_after_s * 1000))
        super().after_process_message(_RetryOnSettle(broker), message, result=result,
                                      exception=exception)


class _RetryOnSettle:
    """Stands in for the broker in Retries: its re-enqueue is deferred to the acknowledgement."""

    def __init__(self, broker: StudioBroker) -> None:
        self._broker = broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        broker = self._broker
        broker.settle_with(message.message_id,
                           lambda conn: broker.enqueue_on(conn, message, delay=delay))
        return message


def _error_outcome(message: Any, exception: BaseException) -> store.Outcome:
    failed = bool(message.failed)
    return store.Outcome(
        attempt_outcome="failed" if failed else "retrying",
        job_status="failed" if failed else "pending",
        error_type=f"{type(exception).__module__}.{type(exception).__qualname__}",
        error_message=str(exception) or type(exception).__name__,
        error_traceback="".join(traceback.format_exception(exception)),
    )


class JobHistory(Middleware):
    """Records every job and every attempt (worker, times, outcome, error) in studio.job."""

    def __init__(self, pool: ForkSafePool, *, default_max_retries: int,
                 retention_days: float) -> None:
        self.pool = pool
        self.default_max_retries = default_max_retries
        self.retention_s = retention_days * 86_400
        self.attempts: dict[str, tuple[int, int]] = {}  # message id -> (attempt, max retries)
        self.stopping = threading.Event()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self.pool.connection() as conn:
            store.register_actors(conn, actor_infos(broker))
        self.stopping.clear()
        threading.Thread(target=self._sweep_forever, name="studio-retention", daemon=True).start()

    def before_worker_boot(self, broker: StudioBroker, worker: dramatiq.Worker) -> None:
        broker.claim_limit = worker.worker_threads

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.stopping.set()

    def before_process_message(self, broker: StudioBroker, message: Any) -> None:
        actor = broker.get_actor(message.actor_name)
        max_retries = message.options.get(
            "max_retries", actor.options.get("max_retries", self.default_max_retries))
        attempt = broker.take_started(message.message_id)  # the claim started it
        if attempt is not None:
            self.attempts[message.message_id] = (attempt, max_retries)

    def after_process_message(self, broker: StudioBroker, message: Any, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        started = self.attempts.pop(message.message_id, None)
        # Without our before-hook (another middleware's failed first), the claim's attempt is closed.
        attempt, max_retries = started or (broker.take_started(message.message_id), None)
        if attempt is None:
            return
        outcome = (store.Outcome("completed", "completed") if exception is None
                   else _error_outcome(message, exception))
        broker.settle_with(message.message_id, lambda conn: store.finish_attempt(
            conn, message.message_id, attempt, outcome, max_retries))

    def after_skip_message(self, broker: StudioBroker, message: Any) -> None:
        self._fail_unrun(broker, message, "dramatiq.SkipMessage",
                         "skipped without running (older than its max_age)")

    def before_nack(self, broker: StudioBroker, message: Any) -> None:
        """A message rejected before it ran (say, for an actor a deploy removed) fails its job."""
        if broker.settlements(message.message_id):
            return
        error = getattr(message, "_exception", None) or RuntimeError("rejected before it ran")
        self._fail_unrun(broker, message, f"{type(error).__module__}.{type(error).__qualname__}",
                         str(error))

    def _fail_unrun(self, broker: StudioBroker, message: Any, error_type: str, error: str) -> None:
        started = self.attempts.pop(message.message_id, None)
        attempt = started[0] if started else broker.take_started(message.message_id)
        outcome = store.Outcome("failed", "failed", error_type, error)
        message_id = message.message_id
        if attempt is None:
            broker.settle_with(message_id, lambda conn: store.fail_unstarted(
                conn, message_id, error_type, error))
        else:
            broker.settle_with(message_id, lambda conn: store.finish_attempt(
                conn, message_id, attempt, outcome))

    def _sweep_forever(self) -> None:
        while not self.stopping.is_set():
            self.sweep()
            self.stopping.wait(RETENTION_SWEEP_S)

    def sweep(self) -> int:
        """Delete completed jobs older than the retention period."""
        try:
            with self.pool.connection() as conn:
                deleted = store.purge_completed(conn, self.retention_s)
        except Exception:  # the next sweep tries again; a worker must not die of this
            logger.exception("Retention sweep failed.")
            return 0
        if deleted:
            logger.info("Removed %d completed jobs past retention.", deleted)
        return deleted


def actor_infos(broker: dramatiq.Broker) -> list[store.ActorInfo]:
    """The broker's actors as the registry stores them."""
    retries = next((m for m in broker.middleware if isinstance(m, Retries)), None)
    limit = next((m for m in broker.middleware if isinstance(m, TimeLimit)), None)
    return [store.ActorInfo(
        name=name, queue_name=actor.queue_name,
        max_retries=actor.options.get("max_retries", retries.max_retries if retries else 0),
        time_limit_ms=actor.options.get("time_limit", limit.time_limit if limit else 0),
    ) for name, actor in sorted(broker.actors.items())]


def default_middleware(pool: ForkSafePool, *, max_retries: int, time_limit_ms: int,
                       retention_days: float) -> list[Middleware]:
    """Dramatiq's defaults with our retry policy. After-hooks run in reverse order, so
    history, placed before retries, sees the retry decision."""
    return [
        AgeLimit(),
        TimeLimit(time_limit=time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        JobHistory(pool, default_max_retries=max_retries, retention_days=retention_days),
        StudioRetries(max_retries=max_retries),
    ]
