"""Job history in studio.job / studio.job_attempt: what the middleware writes and the admin reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import Connection

# The broker's claim (dramatiq-postgres's, same order and locking) that also starts an attempt
# for each message claimed: one transaction instead of two per job. A worker claims no more
# messages than it has free threads, so claimed means started.
CLAIM_AND_START = """
WITH next AS (
    SELECT message_id FROM dramatiq.queue
     WHERE queue_name = %(queue)s AND state = 'queued' AND available_at <= now()
     ORDER BY available_at, position
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE dramatiq.queue AS q
       SET state = 'consumed', worker_id = %(worker_id)s, consumed_at = now(), mtime = now()
      FROM next
     WHERE q.message_id = next.message_id
    RETURNING q.message_id, q.message, q.available_at, q.position
), job AS (
    INSERT INTO studio.job AS j (message_id, actor_name, queue_name, message, status,
                                 attempts, started_at)
    SELECT message_id, message ->> 'actor_name', message ->> 'queue_name', message, 'active', 1,
           clock_timestamp()
      FROM claimed
    ON CONFLICT (message_id) DO UPDATE
        SET status = 'active', attempts = j.attempts + 1, started_at = clock_timestamp(),
            updated_at = clock_timestamp()
    RETURNING message_id, attempts
), interrupted AS (
    UPDATE studio.job_attempt
       SET outcome = 'interrupted', finished_at = clock_timestamp(),
           error_message = 'the worker running this attempt stopped before it finished'
     WHERE message_id IN (SELECT message_id FROM claimed) AND finished_at IS NULL
), attempt AS (
    INSERT INTO studio.job_attempt (message_id, attempt, worker)
    SELECT message_id, attempts, %(worker)s FROM job
)
SELECT claimed.message::text, job.attempts
  FROM claimed JOIN job USING (message_id)
 ORDER BY claimed.available_at, claimed.position
"""

# Undo the attempts of claimed messages handed back unstarted (a worker shutting down).
UNSTART = """
WITH gone AS (
    DELETE FROM studio.job_attempt AS a
     USING unnest(%s::uuid[], %s::int[]) AS r(message_id, attempt)
     WHERE a.message_id = r.message_id AND a.attempt = r.attempt AND a.finished_at IS NULL
    RETURNING a.message_id
)
UPDATE studio.job
   SET status = 'pending', attempts = attempts - 1, updated_at = clock_timestamp(),
       started_at = CASE WHEN attempts > 1 THEN started_at END
 WHERE message_id IN (SELECT message_id FROM gone)
"""

# The job row is only touched while this attempt is its latest: a retry may already be running.
FINISH_ATTEMPT = """
WITH attempt AS (
    UPDATE studio.job_attempt
       SET finished_at = clock_timestamp(), outcome = %(outcome)s, error_type = %(error_type)s,
           error_message = %(error_message)s, error_traceback = %(error_traceback)s
     WHERE message_id = %(id)s AND attempt = %(attempt)s
)
UPDATE studio.job
   SET status = %(status)s::studio.job_status, max_retries = coalesce(%(max_retries)s, max_retries),
       finished_at = CASE WHEN %(status)s::studio.job_status IN ('completed', 'failed')
                          THEN clock_timestamp() END,
       error_type = %(error_type)s, error_message = %(error_message)s,
       error_traceback = %(error_traceback)s, updated_at = clock_timestamp()
 WHERE message_id = %(id)s AND attempts = %(attempt)s
"""

FAIL_UNSTARTED = """
UPDATE studio.job
   SET status = 'failed', finished_at = clock_timestamp(), error_type = %(error_type)s,
       error_message = %(error_message)s, updated_at = clock_timestamp()
 WHERE message_id = %(id)s AND status = 'pending'
"""

REGISTER_ACTOR = """
INSERT INTO studio.actor (actor_name, queue_name, max_retries, time_limit_ms)
VALUES (%s, %s, %s, %s)
ON CONFLICT (actor_name) DO UPDATE
    SET queue_name = EXCLUDED.queue_name, max_retries = EXCLUDED.max_retries,
        time_limit_ms = EXCLUDED.time_limit_ms, registered_at = now()
"""

PURGE_COMPLETED = """
DELETE FROM studio.job
 WHERE message_id IN (
    SELECT message_id FROM studio.job
     WHERE status = 'completed' AND finished_at < now() - make_interval(secs => %s)
     LIMIT %s)
"""


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the attempt's outcome and the job status that follows."""

    attempt_outcome: str
    job_status: str
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None


@dataclass(frozen=True)
class ActorInfo:
    """What SQL producers need to know of an actor."""

    name: str
    queue_name: str
    max_retries: int
    time_limit_ms: int


def claim_and_start(conn: Connection[Any], queue: str, limit: int, worker_id: str,
                    worker: str) -> list[tuple[str, int]]:
    """Claim up to limit due messages of queue and start an attempt for each: (message, attempt)."""
    params = {"queue": queue, "limit": limit, "worker_id": worker_id, "worker": worker}
    return [(str(m), int(a)) for m, a in conn.execute(CLAIM_AND_START, params).fetchall()]


def unstart(conn: Connection[Any], attempts: dict[str, int]) -> None:
    """Forget the attempts of messages handed back without running."""
    conn.execute(UNSTART, (list(attempts), list(attempts.values())))


def finish_attempt(conn: Connection[Any], message_id: str, attempt: int, outcome: Outcome,
                   max_retries: int | None = None) -> None:
    """Close the attempt and, unless a newer attempt started, move the job to its next status."""
    conn.execute(FINISH_ATTEMPT, {
        "id": message_id, "attempt": attempt, "outcome": outcome.attempt_outcome,
        "max_retries": max_retries,
        "status": outcome.job_status, "error_type": outcome.error_type,
        "error_message": outcome.error_message, "error_traceback": outcome.error_traceback})


def fail_unstarted(conn: Connection[Any], message_id: str, error_type: str, error_message: str) -> None:
    """Fail a job the worker skipped without running it."""
    conn.execute(FAIL_UNSTARTED, {"id": message_id, "error_type": error_type,
                                  "error_message": error_message})


def register_actors(conn: Connection[Any], actors: list[ActorInfo]) -> None:
    """Record (or refresh) the actors SQL producers may name in studio.add_job."""
    with conn.cursor() as cur:
        cur.executemany(REGISTER_ACTOR, [
            (a.name, a.queue_name, a.max_retries, a.time_limit_ms) for a in actors])


def purge_completed(conn: Connection[Any], older_than_s: float, batch: int = 5000) -> int:
    """Delete completed jobs finished longer ago than older_than_s; returns how many."""
    deleted = 0
    while True:
        count = conn.execute(PURGE_COMPLETED, (older_than_s, batch)).rowcount
        conn.commit()
        deleted += count
        if count < batch:
            return deleted
