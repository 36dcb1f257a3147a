"""The PostgreSQL broker, extended so that every enqueue records its job, de-duplicates by key and
can join the caller's transaction, and so that acknowledging a message commits, in the same
transaction, whatever the middleware deferred to that moment (history, the retry)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import dramatiq
import tenacity
from dramatiq import Message
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware
from dramatiq_postgres import PostgresBroker
from dramatiq_postgres.broker import QUERIES, PostgresConsumer
from dramatiq_postgres.utils import raise_connection_error, tidy4json, transaction
from psycopg import Connection, DatabaseError, OperationalError
from psycopg.types.json import Json, Jsonb

from clients.postgres import ForkSafePool
from jobs import store

logger = logging.getLogger(__name__)

Settlement = Callable[[Connection[Any]], None]

ENQUEUE = "SELECT studio.enqueue_message(%s::jsonb, %s::bigint)"

# Only a lost connection is worth another try; an SQL error would fail the same way again.
retry_on_disconnect = tenacity.retry(
    retry=tenacity.retry_if_exception_type(OperationalError),
    wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
    stop=tenacity.stop_after_attempt(5),
    reraise=True,
)


class StudioBroker(PostgresBroker):  # type: ignore[misc]
    """PostgresBroker whose enqueue goes through studio.enqueue_message."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # A forked child is another worker: it must not heartbeat under its parent's id.
        alive = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _new_identity(alive()))
        self._settlements: dict[str, list[Settlement]] = {}
        self._settlements_lock = threading.Lock()
        self.started: dict[str, int] = {}  # message id -> attempt started by our claim
        self.claim_limit: int | None = None  # the worker's threads, once it boots

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> StudioConsumer:
        """A consumer that starts attempts as it claims and settles with the deferred writes.
        It holds no more messages than the worker has threads, so idle workers get the rest."""
        if self.claim_limit and queue_name not in self.delay_queues:
            prefetch = min(prefetch, self.claim_limit)
        return StudioConsumer(broker=self, queue_name=queue_name, prefetch=prefetch, timeout=timeout)

    def take_started(self, message_id: str) -> int | None:
        """The attempt our claim started for message_id, if any (once)."""
        return self.started.pop(message_id, None)

    def settle_with(self, message_id: str, write: Settlement) -> None:
        """Run write in the transaction that acks or rejects message_id, so both happen or neither."""
        with self._settlements_lock:
            self._settlements.setdefault(message_id, []).append(write)

    def settlements(self, message_id: str, *, forget: bool = False) -> list[Settlement]:
        """The writes deferred to message_id's settlement (and drop them, with forget)."""
        with self._settlements_lock:
            if forget:
                return self._settlements.pop(message_id, [])
            return list(self._settlements.get(message_id, []))

    def close(self) -> None:
        """Stop listening and close the pool (built for this broker, so ours to close)."""
        super().close()
        self.pool.close()

    @retry_on_disconnect
    def enqueue(self, message: dramatiq.Message[Any], *,
                delay: int | None = None) -> dramatiq.Message[Any]:
        """Enqueue in a transaction of our own."""
        with transaction(self.pool) as cursor:
            return self._enqueue(cursor.connection, message, delay)

    def enqueue_on(self, conn: Connection[Any], message: dramatiq.Message[Any], *,
                   delay: int | None = None) -> dramatiq.Message[Any]:
        """Enqueue inside the caller's transaction: a rollback means the job never existed."""
        return self._enqueue(conn, message, delay)

    def _enqueue(self, conn: Connection[Any], message: dramatiq.Message[Any],
                 delay: int | None) -> dramatiq.Message[Any]:
        self.emit_before("enqueue", message, delay)
        if delay:
            message = message.copy(queue_name=dq_name(message.queue_name))
            message.options["eta"] = current_millis() + delay
        row = conn.execute(ENQUEUE, (Jsonb(tidy4json(message)), delay or 0)).fetchone()
        assert row is not None
        if str(row[0]) != message.message_id:  # de-duplicated: the live job answers
            message = message.copy(message_id=str(row[0]))
        self.emit_after("enqueue", message, delay)
        return message


def worker_name() -> str:
    """host:pid, as attempts record the worker that ran them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _new_identity(broker: StudioBroker | None) -> None:
    if broker is not None:
        broker.worker_id = str(uuid4())


def build_broker(pool: ForkSafePool, *, poll_interval_s: float, heartbeat_ttl_s: float,
                 retention_days: float, middleware: list[Middleware]) -> StudioBroker:
    """A broker on pool; crashed workers' jobs come back after about heartbeat_ttl_s."""
    return StudioBroker(
        pool=pool,
        results=False,
        poll_interval=poll_interval_s,
        heartbeat_interval=max(1.0, heartbeat_ttl_s / 5),
        heartbeat_ttl=heartbeat_ttl_s,
        maintenance_interval=max(1.0, heartbeat_ttl_s / 2),
        # Failed messages stay in dramatiq.queue for this long; studio.job keeps them for the admin.
        purge_maxage=f"{retention_days} days",
        middleware=middleware,
    )


def send_in_transaction(conn: Connection[Any], actor: dramatiq.Actor[Any, Any], *,
                        kwargs: dict[str, Any] | None = None, delay_ms: int | None = None,
                        dedup_key: str | None = None, **options: Any) -> dramatiq.Message[Any]:
    """Enqueue actor(**kwargs) on the caller's open transaction; returns the (live) message."""
    if dedup_key is not None:
        options["dedup_key"] = dedup_key
    message = actor.message_with_options(kwargs=kwargs or {}, **options)
    broker = actor.broker
    assert isinstance(broker, StudioBroker)
    return broker.enqueue_on(conn, message, delay=delay_ms)


class StudioConsumer(PostgresConsumer):  # type: ignore[misc]
    """Acks and rejects in one transaction with the writes deferred to them. Dramatiq retries a
    settlement that fails on a lost connection until the database is back, so a job's history and
    its retry are never lost to an outage between the job's end and its acknowledgement."""

    @raise_connection_error  # type: ignore[untyped-decorator]
    def ack(self, message: Any) -> None:
        """Delete the message (or leave it rescheduled by a deferred retry)."""
        self._settle(message, QUERIES.ACK, (message.message_id, message.queue_name,
                                            self._done_channel(message), message.message_id))

    @raise_connection_error  # type: ignore[untyped-decorator]
    def nack(self, message: Any) -> None:
        """Mark the message rejected, keeping its traceback in its options."""
        self._settle(message, QUERIES.NACK, (Json(tidy4json(message)), message.message_id,
                                             message.queue_name, self._done_channel(message),
                                             message.message_id))

    @raise_connection_error  # type: ignore[untyped-decorator]
    def claim(self, limit: int) -> None:
        """Claim due messages; for a work queue, start their attempts in the same statement."""
        if self.queue_name in self.broker.delay_queues:
            super().claim(limit)
            return
        with transaction(self.get_consume_conn()) as cursor:
            rows = store.claim_and_start(cursor.connection, self.queue_name, limit,
                                         self.broker.worker_id, worker_name())
        for payload, attempt in rows:
            message = Message.decode(payload.encode("utf-8"))
            self.broker.started[message.message_id] = attempt
            self.buffer.append(message)

    @raise_connection_error  # type: ignore[untyped-decorator]
    def requeue(self, messages: Any) -> None:
        """Hand back claimed messages that never ran, forgetting their attempts."""
        messages = list(messages)
        unstarted = {m.message_id: a for m in messages
                     if (a := self.broker.take_started(m.message_id)) is not None}
        with transaction(self.get_consume_conn()) as cursor:
            cursor.execute(QUERIES.REQUEUE, ([m.message_id for m in messages],))
            if unstarted:
                store.unstart(cursor.connection, unstarted)

    def _done_channel(self, message: Any) -> str:
        return f"dramatiq.{message.queue_name}.ack"

    def _settle(self, message: Any, query: str, params: tuple[Any, ...]) -> None:
        writes = self.broker.settlements(message.message_id)
        try:
            self._commit(writes, query, params)
        except OperationalError:
            raise  # Dramatiq waits and tries again
        except DatabaseError:
            logger.critical("Deferred writes for %s failed; settling without them.",
                            message.message_id, exc_info=True)
            self._commit([], query, params)
        self.broker.settlements(message.message_id, forget=True)
        self.in_processing.discard(message.message_id)
        self.wakeup.set()

    def _commit(self, writes: list[Settlement], query: str, params: tuple[Any, ...]) -> None:
        with transaction(self.pool) as cursor:
            for write in writes:
                write(cursor.connection)
            cursor.execute(query, params)
