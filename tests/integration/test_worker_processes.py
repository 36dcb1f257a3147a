"""The worker as operators run it: `dramatiq actors`, `studio worker`, `--once`, and crashes."""

from __future__ import annotations

import time

import pytest

from settings import PROJECT_DIR
from tests.support import actors as test_actors
from tests.support.processes import run, start
from tests.support.waiting import attempts, marks, wait_for, wait_for_status

pytestmark = pytest.mark.slow


def _wait_ready(process, timeout_s: float = 30) -> None:
    wait_for(lambda: "ready for action" in process.output() or process.popen.poll() is not None,
             timeout_s=timeout_s, what="worker start")
    assert process.popen.poll() is None, process.output()


def test_dramatiq_actors_runs_jobs_from_send_sql_and_delayed_send(database_url, db, broker, tmp_path):
    env = {"DATABASE_URL": database_url}
    worker = start(["dramatiq", "actors", "tests.support.actors", "--processes", "1",
                    "--threads", "2"], tmp_path / "worker.log", env)
    try:
        _wait_ready(worker)
        sent = test_actors.record.send("cli-send")
        delayed = test_actors.record.send_with_options(args=("cli-delayed",), delay=1000)
        (from_sql,) = db.execute(
            "SELECT studio.add_job('test-record', '{\"key\": \"cli-sql\"}')").fetchone()
        for message_id in (sent.message_id, delayed.message_id, str(from_sql)):
            wait_for_status(database_url, message_id, "completed")
    finally:
        worker.stop()
    assert {m["key"] for k in ("cli-send", "cli-delayed", "cli-sql") for m in marks(database_url, k)} \
        == {"cli-send", "cli-delayed", "cli-sql"}


def test_studio_worker_runs_jobs_with_the_configured_concurrency(database_url, broker, tmp_path):
    env = {"DATABASE_URL": database_url, "WORKER_CONCURRENCY": "3", "WORKER_POLL_INTERVAL": "200"}
    worker = start(["studio", "worker", "actors", "tests.support.actors"], tmp_path / "w.log", env)
    try:
        _wait_ready(worker)
        messages = [test_actors.sleep_then_record.send(f"c-{i}", 1.0) for i in range(4)]
        for message in messages:
            wait_for_status(database_url, message.message_id, "completed")
    finally:
        assert worker.stop() == 0, worker.output()
    spans = sorted((a["started_at"], a["finished_at"]) for m in messages
                   for a in attempts(database_url, m.message_id))
    assert max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans) == 3


def test_studio_worker_once_runs_every_runnable_job_then_exits(database_url, broker):
    ready = [test_actors.record.send(f"once-{i}") for i in range(3)]
    future = test_actors.record.send_with_options(args=("once-future",), delay=600_000)

    result = run(["studio", "worker", "--once", "actors", "tests.support.actors"],
                 {"DATABASE_URL": database_url, "WORKER_POLL_INTERVAL": "200"})

    assert result.returncode == 0, result.stdout + result.stderr
    for message in ready:
        wait_for_status(database_url, message.message_id, "completed", timeout_s=1)
    wait_for_status(database_url, future.message_id, "pending", timeout_s=1)


def test_a_job_whose_worker_is_killed_is_redelivered_and_completes_within_30_s(
        database_url, broker, tmp_path, capsys):
    env = {"DATABASE_URL": database_url}
    argv = ["studio", "worker", "actors", "tests.support.actors"]
    first = start(argv, tmp_path / "first.log", env)
    _wait_ready(first)
    message = test_actors.stall_first_run.send("crash")
    wait_for(lambda: marks(database_url, "crash"), what="the job to start")
    second = start(argv, tmp_path / "second.log", env)
    try:
        _wait_ready(second)
        killed_at = time.monotonic()
        first.kill()
        wait_for_status(database_url, message.message_id, "completed", timeout_s=60)
        recovered_s = time.monotonic() - killed_at
    finally:
        second.stop()
    with capsys.disabled():
        print(f"\n[measured] SIGKILLed job redelivered and completed {recovered_s:.1f} s after the kill")
    tries = attempts(database_url, message.message_id)
    assert [a["outcome"] for a in tries] == ["interrupted", "completed"]
    assert tries[0]["worker"] != tries[1]["worker"]
    assert recovered_s < 30


def test_studio_worker_reload_restarts_on_a_code_change_and_keeps_running_jobs(
        database_url, broker, tmp_path):
    probe = PROJECT_DIR / "jobs" / "_reload_probe.py"
    worker = start(["studio", "worker", "--reload", "actors", "tests.support.actors"],
                   tmp_path / "reload.log", {"DATABASE_URL": database_url})
    try:
        _wait_ready(worker)
        probe.write_text("CHANGED = True\n")
        wait_for(lambda: worker.output().count("ready for action") >= 2, timeout_s=30,
                 what="the worker to restart")
        message = test_actors.record.send("after-reload")
        wait_for_status(database_url, message.message_id, "completed")
    finally:
        probe.unlink(missing_ok=True)
        worker.stop()


def test_studio_dev_runs_jobs_on_the_embedded_database_with_no_server_configured(tmp_path):
    env = {"DATABASE_URL": "", "EMBEDDED_PG_DIR": str(tmp_path / "pgdata")}
    dev = start(["studio", "dev"], tmp_path / "dev.log", env)
    try:
        _wait_ready(dev, timeout_s=60)
        result = run(["studio", "ping", "--timeout", "20"], env)
        assert result.returncode == 0, result.stderr + dev.output()
        assert result.stdout.startswith("pong")
    finally:
        assert dev.stop() == 0, dev.output()
    assert "applied 2 migration(s)" in dev.output()
