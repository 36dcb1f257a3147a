"""Jobs through a real worker on the real broker: enqueue paths, retries, failures, limits."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from urllib.parse import urlsplit

import dramatiq
import psycopg
import pytest

from actors.middleware import JobHistory
from clients.postgres import bundled_binary
from jobs.broker import send_in_transaction
from tests.support import actors as test_actors
from tests.support.db import with_dbname
from tests.support.waiting import attempts, job, marks, wait_for, wait_for_status


def test_a_job_sent_with_actor_send_runs_and_is_recorded_as_completed(database_url, worker):
    message = test_actors.record.send("sent")

    row = wait_for_status(database_url, message.message_id, "completed")

    assert [m["key"] for m in marks(database_url, "sent")] == ["sent"]
    assert row["actor_name"] == "test-record" and row["queue_name"] == "test"
    assert row["attempts"] == 1 and row["error_type"] is None
    assert row["enqueued_at"] <= row["started_at"] <= row["finished_at"]
    (attempt,) = attempts(database_url, message.message_id)
    assert attempt["outcome"] == "completed" and attempt["worker"].endswith(f":{os.getpid()}")
    elapsed_ms = (attempt["finished_at"] - attempt["started_at"]).total_seconds() * 1000
    assert attempt["duration_ms"] == pytest.approx(elapsed_ms, abs=0.01)


def test_a_job_added_with_the_sql_function_runs(database_url, db, worker):
    (message_id,) = db.execute(
        "SELECT studio.add_job('test-record', '{\"key\": \"from-sql\"}')").fetchone()

    wait_for_status(database_url, str(message_id), "completed")

    assert len(marks(database_url, "from-sql")) == 1


def test_a_delayed_send_waits_at_least_its_delay(database_url, worker):
    message = test_actors.record.send_with_options(args=("later",), delay=1500)

    row = wait_for_status(database_url, message.message_id, "completed")

    assert (row["started_at"] - row["enqueued_at"]).total_seconds() >= 1.5


def test_a_delayed_sql_job_waits_at_least_its_delay(database_url, db, worker):
    (message_id,) = db.execute(
        "SELECT studio.add_job('test-record', '{\"key\": \"sql-later\"}', delay_ms => 1200)"
    ).fetchone()

    row = wait_for_status(database_url, str(message_id), "completed")

    assert (row["started_at"] - row["enqueued_at"]).total_seconds() >= 1.2


def test_jobs_enqueued_in_a_rolled_back_transaction_never_run(database_url, worker):
    with psycopg.connect(database_url) as conn:
        python_job = send_in_transaction(conn, test_actors.record, kwargs={"key": "rolled-back"})
        (sql_job,) = conn.execute(
            "SELECT studio.add_job('test-record', '{\"key\": \"rolled-back\"}')").fetchone()
        conn.rollback()
        control = send_in_transaction(conn, test_actors.record, kwargs={"key": "committed"})
        conn.commit()

    wait_for_status(database_url, control.message_id, "completed")

    assert marks(database_url, "rolled-back") == []
    assert job(database_url, python_job.message_id) is None
    assert job(database_url, str(sql_job)) is None


def test_a_job_enqueued_in_an_open_transaction_runs_only_after_commit(database_url, worker):
    with psycopg.connect(database_url) as conn:
        message = send_in_transaction(conn, test_actors.record, kwargs={"key": "after-commit"})
        time.sleep(1.5)  # longer than a poll interval: a visible job would have run by now
        assert marks(database_url, "after-commit") == []
        conn.commit()

    wait_for_status(database_url, message.message_id, "completed")
    assert len(marks(database_url, "after-commit")) == 1


def test_enqueueing_with_a_live_dedup_key_returns_the_existing_job(database_url, db, broker):
    first = test_actors.record.send_with_options(args=("dedup",), dedup_key="sync:key-1")
    second = test_actors.record.send_with_options(args=("dedup",), dedup_key="sync:key-1")
    (from_sql,) = db.execute(
        "SELECT studio.add_job('test-record', '{\"key\": \"dedup\"}', dedup_key => 'sync:key-1')"
    ).fetchone()

    assert second.message_id == first.message_id == str(from_sql)
    assert db.execute("SELECT count(*) FROM studio.job").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM dramatiq.queue").fetchone() == (1,)


def test_a_dedup_key_is_free_again_once_its_job_has_finished(database_url, worker):
    first = test_actors.record.send_with_options(args=("again",), dedup_key="k")
    wait_for_status(database_url, first.message_id, "completed")

    second = test_actors.record.send_with_options(args=("again",), dedup_key="k")

    assert second.message_id != first.message_id
    wait_for_status(database_url, second.message_id, "completed")
    assert len(marks(database_url, "again")) == 2


def test_an_unknown_actor_in_sql_is_refused_with_the_known_actors_named(db):
    try:
        db.execute("SELECT studio.add_job('no-such-job')")
    except psycopg.errors.RaiseException as error:
        assert 'unknown actor "no-such-job"' in str(error)
        assert "test-record" in (error.diag.message_hint or "")
    else:
        raise AssertionError("add_job accepted an unknown actor")


def test_a_failing_job_is_retried_with_growing_backoff_then_failed_with_its_traceback(
        database_url, worker):
    message = test_actors.always_fails.send("flaky")

    row = wait_for_status(database_url, message.message_id, "failed")

    tries = attempts(database_url, message.message_id)
    assert [a["outcome"] for a in tries] == ["retrying", "retrying", "failed"]
    gaps = [(b["started_at"] - a["finished_at"]).total_seconds() for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # min_backoff 300 ms, doubling
    assert row["attempts"] == 3 and row["max_retries"] == 2
    assert row["error_type"] == "builtins.RuntimeError"
    assert row["error_message"] == "boom for flaky"
    assert "raise RuntimeError" in row["error_traceback"]
    assert len(marks(database_url, "flaky")) == 3


def test_a_permanent_error_fails_the_job_at_once_with_the_message_for_the_user(
        database_url, db, worker):
    message = test_actors.permanent_failure.send("exp-7")

    row = wait_for_status(database_url, message.message_id, "failed")

    assert len(marks(database_url, "exp-7")) == 1
    assert [a["outcome"] for a in attempts(database_url, message.message_id)] == ["failed"]
    assert row["error_type"] == "jobs.errors.PermanentError"
    assert row["error_message"] == "experiment exp-7 has no 'model' column (row 1, column C)"
    assert db.execute("SELECT state::text FROM dramatiq.queue").fetchall() == [("rejected",)]


def test_a_rate_limited_job_is_retried_after_exactly_the_delay_asked(database_url, worker):
    message = test_actors.rate_limited_once.send("limited", 2.0)

    wait_for_status(database_url, message.message_id, "completed")

    first, second = attempts(database_url, message.message_id)
    assert first["outcome"] == "retrying" and first["error_type"] == "jobs.errors.RateLimited"
    waited = (second["started_at"] - first["finished_at"]).total_seconds()
    assert 2.0 <= waited < 3.5


def test_five_jobs_run_at_once_and_a_sixth_waits_for_a_free_thread(database_url, broker, worker):
    messages = [test_actors.sleep_then_record.send(f"slot-{i}", 1.5) for i in range(6)]

    for message in messages:
        wait_for_status(database_url, message.message_id, "completed")

    spans = sorted((a["started_at"], a["finished_at"]) for m in messages
                   for a in attempts(database_url, m.message_id))
    overlap_at_sixth_start = sum(1 for s, f in spans[:5] if s <= spans[5][0] < f)
    assert max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans) == 5
    assert overlap_at_sixth_start < 5
    assert spans[5][0] >= min(f for _, f in spans[:5])


def test_the_broker_is_a_real_postgres_broker_not_a_stub(broker):
    assert type(broker).__mro__[1].__name__ == "PostgresBroker"
    assert dramatiq.get_broker() is broker


def test_a_job_past_its_actor_time_limit_is_stopped_and_failed(database_url, worker):
    message = test_actors.too_slow.send("slow")

    row = wait_for_status(database_url, message.message_id, "failed")

    assert row["error_type"] == "dramatiq.middleware.time_limit.TimeLimitExceeded"
    assert marks(database_url, "slow:done") == []
    assert (row["finished_at"] - row["started_at"]).total_seconds() < 3


def test_completed_jobs_past_retention_are_removed_and_failed_ones_kept(database_url, db, broker, worker):
    old, recent = test_actors.record.send("old"), test_actors.record.send("recent")
    failed = test_actors.permanent_failure.send("old-failure")
    for message, status in ((old, "completed"), (recent, "completed"), (failed, "failed")):
        wait_for_status(database_url, message.message_id, status)
    db.execute("UPDATE studio.job SET finished_at = now() - interval '8 days' "
               "WHERE message_id = ANY(%s::uuid[])", ([old.message_id, failed.message_id],))
    history = next(m for m in broker.middleware if isinstance(m, JobHistory))

    assert history.sweep() == 1

    assert job(database_url, old.message_id) is None
    assert attempts(database_url, old.message_id) == []
    assert job(database_url, recent.message_id)["status"] == "completed"
    assert job(database_url, failed.message_id)["status"] == "failed"


def _cut_connections(pg_server: str, database_url: str, allow: bool) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(with_dbname(pg_server, "postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))


def test_a_job_that_ends_during_a_database_outage_is_recorded_once_the_database_is_back(
        pg_server, database_url, worker):
    message = test_actors.mark_then_sleep.send("outage", 1.0)
    wait_for(lambda: marks(database_url, "outage"), what="the job to start")

    _cut_connections(pg_server, database_url, allow=False)
    time.sleep(7)  # longer than the pool's 5 s wait: the job ends, its settlement must wait
    _cut_connections(pg_server, database_url, allow=True)

    row = wait_for_status(database_url, message.message_id, "completed", timeout_s=40)
    assert row["attempts"] == 1
    assert [a["outcome"] for a in attempts(database_url, message.message_id)] == ["completed"]
    after = test_actors.record.send("after-outage")
    wait_for_status(database_url, after.message_id, "completed", timeout_s=30)


def test_psql_can_enqueue_in_its_own_transaction_and_a_rollback_discards_the_job(database_url, worker):
    psql = str(bundled_binary("psql"))
    script = """
        BEGIN;
        SELECT studio.add_job('test-record', '{"key": "psql-rolled-back"}');
        ROLLBACK;
        BEGIN;
        UPDATE test_mark SET key = key WHERE false;  -- the row that caused the job, in real life
        SELECT studio.add_job('test-record', '{"key": "psql-committed"}');
        COMMIT;
    """
    result = subprocess.run([psql, database_url, "-v", "ON_ERROR_STOP=1", "-qAt"], input=script,
                            capture_output=True, text=True, timeout=30, check=False)

    assert result.returncode == 0, result.stderr
    rolled_back_id, committed_id = result.stdout.split()
    wait_for_status(database_url, committed_id, "completed")
    assert job(database_url, rolled_back_id) is None
    assert marks(database_url, "psql-rolled-back") == []


def test_a_queued_job_whose_actor_no_longer_exists_fails_with_the_actor_named(database_url, db, worker):
    orphan = test_actors.record.message("orphan")
    orphan = orphan.copy(actor_name="removed-in-last-deploy")

    db.execute("SELECT studio.enqueue_message(%s::jsonb, 0)", (orphan.encode().decode(),))

    row = wait_for_status(database_url, orphan.message_id, "failed")
    assert row["error_type"] == "dramatiq.errors.ActorNotFound"
    assert "removed-in-last-deploy" in row["error_message"]
    assert db.execute("SELECT state::text FROM dramatiq.queue").fetchall() == [("rejected",)]


def test_a_job_older_than_its_max_age_is_skipped_and_failed_with_the_reason(database_url, db, worker):
    message = test_actors.record.send_with_options(args=("too-old",), max_age=1, delay=50)

    row = wait_for_status(database_url, message.message_id, "failed")

    assert row["error_type"] == "dramatiq.SkipMessage"
    assert "older than its max_age" in row["error_message"]
    assert marks(database_url, "too-old") == []
    assert db.execute("SELECT count(*) FROM studio.job_attempt WHERE finished_at IS NULL").fetchone() == (0,)


def test_a_claimed_job_handed_back_unstarted_is_pending_again_with_no_attempt(database_url, db, broker):
    message = test_actors.record.send("handed-back")
    consumer = broker.consume("test", prefetch=5)
    try:
        claimed = wait_for(lambda: next(consumer), what="the claim")
        assert job(database_url, message.message_id)["status"] == "active"

        consumer.requeue([claimed])
    finally:
        consumer.close()

    row = job(database_url, message.message_id)
    assert (row["status"], row["attempts"], row["started_at"]) == ("pending", 0, None)
    assert attempts(database_url, message.message_id) == []
    assert db.execute("SELECT state::text FROM dramatiq.queue").fetchall() == [("queued",)]
