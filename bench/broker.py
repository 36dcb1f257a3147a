"""Broker benchmark: N no-op jobs through one worker process, optionally next to graphile-worker.

    .venv/bin/python bench/broker.py [-n 10000] [--compare graphile-worker]

Each system gets a fresh database on the same PostgreSQL server and two workloads: throughput
(enqueue N jobs, start one worker, time first start to last finish) and pickup latency (jobs
enqueued one by one at a steady rate to the idle worker; started_at - enqueued_at, both taken
from the database clock).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from clients.postgres import embedded_url
from db.migrate import migrate
from jobs import store
from settings import PROJECT_DIR, get_settings

CACHE_DIR = PROJECT_DIR / ".cache" / "bench"  # git-ignored
GRAPHILE_DIR = CACHE_DIR / "graphile"
GRAPHILE_SCRIPT = PROJECT_DIR / "bench" / "graphile" / "worker.js"
GRAPHILE_VERSION = "0.17.3"  # the newest that runs on Node 20: 0.18 needs Node >= 22.18
ENQUEUE_BATCH = 1000  # jobs per transaction while building the backlog
IDLE_BEFORE_LATENCY_S = 2.0
STOP_TIMEOUT_S = 20.0
NEVER = datetime.min.replace(tzinfo=UTC)  # a phase mark before every job

# Both systems show their finished jobs as bench.run, so the same queries measure both.
STUDIO_SCHEMA = """
CREATE SCHEMA bench;
CREATE VIEW bench.run AS SELECT enqueued_at, started_at, finished_at FROM studio.job
 WHERE actor_name = 'bench-noop' AND status = 'completed';
"""
# graphile-worker deletes completed jobs: its task records times here (see graphile/worker.js).
GRAPHILE_SCHEMA = """
CREATE SCHEMA bench;
CREATE TABLE bench.graphile_job (job_id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                                 started_at timestamptz NOT NULL, finished_at timestamptz);
CREATE VIEW bench.run AS SELECT created_at AS enqueued_at, started_at, finished_at
  FROM bench.graphile_job WHERE finished_at IS NOT NULL;
"""
FINISHED = "SELECT count(*) FROM bench.run WHERE enqueued_at >= %s"
THROUGHPUT = """
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8
  FROM bench.run WHERE enqueued_at < %s
"""
LATENCY = """
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - enqueued_at)::float8 * 1000)
  FROM bench.run WHERE enqueued_at >= %s
"""


class BenchError(Exception):
    """The benchmark could not run or its jobs did not finish."""


@dataclass(frozen=True)
class Options:
    """What to run: job counts, pacing, and the worker settings both systems get."""

    jobs: int
    concurrency: int
    poll_interval_ms: int
    latency_jobs: int
    latency_interval_ms: float
    timeout_s: float


@dataclass(frozen=True)
class Worker:
    """A worker process we started, and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass(frozen=True)
class System:
    """A job system under test: its database setup, its SQL enqueue and its worker."""

    name: str
    database: str
    add_jobs_sql: LiteralString  # bulk enqueue; takes the number of jobs
    add_job_sql: LiteralString  # single-job enqueue
    prepare: Callable[[str], None]
    start_worker: Callable[[str, Options], Worker]


@dataclass(frozen=True)
class Result:
    """What one system achieved."""

    name: str
    enqueue_jobs_per_s: float
    jobs_per_s: float
    latency_ms: tuple[float, float, float]


def log(message: str) -> None:
    """Progress to stderr, so stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fresh_database(server_url: str, name: str) -> str:
    """Drop and create database name on the server; returns its URL."""
    database = sql.Identifier(name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


def scalar(url: str, query: LiteralString, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of query."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Worker:
    """Start argv in a process group of its own, its output going to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as output:
        process = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(process, log_path)


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    """The worker; on leaving, SIGTERM, a bounded wait, then SIGKILL for its whole group."""
    try:
        yield worker
    finally:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                worker.process.wait(STOP_TIMEOUT_S)
        with suppress(ProcessLookupError):  # e.g. Dramatiq's forked worker, had it outlived us
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()


def wait_finished(url: str, since: datetime, expected: int, worker: Worker,
                  timeout_s: float) -> None:
    """Wait until expected jobs enqueued since `since` have finished, or fail saying why."""
    deadline = time.monotonic() + timeout_s
    while (done := scalar(url, FINISHED, (since,))) < expected:
        if worker.process.poll() is not None:
            tail = "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-15:])
            raise BenchError(f"the worker exited with code {worker.process.returncode} after "
                             f"{done} of {expected} jobs:\n{tail}")
        if time.monotonic() > deadline:
            raise BenchError(f"only {done} of {expected} jobs finished within {timeout_s:g} s "
                             f"(worker output: {worker.log_path})")
        time.sleep(0.2)


def enqueue_backlog(url: str, system: System, jobs: int) -> float:
    """Add jobs in SQL, ENQUEUE_BATCH per transaction; returns jobs per second."""
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for first in range(0, jobs, ENQUEUE_BATCH):
            conn.execute(system.add_jobs_sql, (min(ENQUEUE_BATCH, jobs - first),))
            conn.commit()
    return jobs / (time.perf_counter() - started)


def enqueue_paced(url: str, system: System, jobs: int, interval_ms: float) -> datetime:
    """Add jobs one transaction each, every interval_ms; returns the database time before."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        started = time.perf_counter()
        for index in range(jobs):
            time.sleep(max(0.0, started + index * interval_ms / 1000 - time.perf_counter()))
            conn.execute(system.add_job_sql)
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def measure(url: str, name: str, latency_mark: datetime, enqueue_jobs_per_s: float) -> Result:
    """Throughput of the backlog and pickup latency percentiles of the paced jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        count, seconds = conn.execute(THROUGHPUT, (latency_mark,)).fetchone() or (0, 0.0)
        percentiles = conn.execute(LATENCY, (latency_mark,)).fetchone()
    assert percentiles is not None
    p50, p95, p99 = percentiles[0]
    return Result(name, enqueue_jobs_per_s, count / seconds, (p50, p95, p99))


def run_system(system: System, server_url: str, options: Options) -> Result:
    """Both workloads on a fresh database with one worker process."""
    url = fresh_database(server_url, system.database)
    system.prepare(url)
    enqueue_rate = enqueue_backlog(url, system, options.jobs)
    log(f"{system.name}: {options.jobs} jobs enqueued ({enqueue_rate:.0f}/s); starting the worker")
    with running(system.start_worker(url, options)) as worker:
        wait_finished(url, NEVER, options.jobs, worker, options.timeout_s)
        log(f"{system.name}: backlog done; measuring pickup latency")
        time.sleep(IDLE_BEFORE_LATENCY_S)
        mark = enqueue_paced(url, system, options.latency_jobs, options.latency_interval_ms)
        wait_finished(url, mark, options.latency_jobs, worker, options.timeout_s)
    return measure(url, system.name, mark, enqueue_rate)


# Ours: the SQL enqueue API producers use, and `studio worker` as deployed.

def prepare_studio(url: str) -> None:
    """Migrate, register the bench actor (studio.add_job checks it) and add bench.run."""
    migrate(url)
    sys.path.insert(0, str(PROJECT_DIR))  # bench/ is not one of the installed packages
    importlib.import_module("bench.noop_actors")  # nothing connects at import
    from actors import broker
    from actors.middleware import actor_infos

    with psycopg.connect(url) as conn:
        store.register_actors(conn, actor_infos(broker))
        conn.execute(STUDIO_SCHEMA)


def start_studio_worker(url: str, options: Options) -> Worker:
    """`studio worker bench.noop_actors`: one process, options.concurrency threads."""
    env = {"DATABASE_URL": url, "WORKER_CONCURRENCY": str(options.concurrency),
           "WORKER_POLL_INTERVAL": str(options.poll_interval_ms)}
    studio = Path(sys.executable).with_name("studio")
    return spawn([str(studio), "worker", "bench.noop_actors"], env, PROJECT_DIR,
                 CACHE_DIR / "studio-worker.log")


STUDIO = System(
    name="ours", database="bench_studio",
    # We have no bulk function: studio.add_job runs once per row.
    add_jobs_sql="SELECT count(studio.add_job('bench-noop')) FROM generate_series(1, %s)",
    add_job_sql="SELECT studio.add_job('bench-noop')",
    prepare=prepare_studio, start_worker=start_studio_worker)


# graphile-worker: installed from npm into the cache, run by bench/graphile/worker.js.

def install_graphile() -> None:
    """npm install graphile-worker into the cache unless that version is already there."""
    if not (shutil.which("node") and shutil.which("npm")):
        raise BenchError("--compare graphile-worker needs node and npm on PATH")
    package = GRAPHILE_DIR / "node_modules" / "graphile-worker" / "package.json"
    if package.exists() and json.loads(package.read_text())["version"] == GRAPHILE_VERSION:
        return
    log(f"installing graphile-worker@{GRAPHILE_VERSION} into {GRAPHILE_DIR}")
    GRAPHILE_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", str(GRAPHILE_DIR), "--save-exact", "--no-audit",
                    "--no-fund", "--loglevel=error", f"graphile-worker@{GRAPHILE_VERSION}"],
                   check=True, timeout=600)


def node_env(url: str) -> dict[str, str]:
    """What bench/graphile/worker.js needs: the database and where graphile-worker lives."""
    return {"DATABASE_URL": url, "NODE_PATH": str(GRAPHILE_DIR / "node_modules")}


def prepare_graphile(url: str) -> None:
    """Install graphile-worker, create its schema and the table its task records times in."""
    install_graphile()
    subprocess.run(["node", str(GRAPHILE_SCRIPT), "migrate"], env={**os.environ, **node_env(url)},
                   cwd=GRAPHILE_DIR, check=True, timeout=120)
    with psycopg.connect(url) as conn:
        conn.execute(GRAPHILE_SCHEMA)


def start_graphile_worker(url: str, options: Options) -> Worker:
    """`node worker.js run`: one process running options.concurrency jobs at once."""
    argv = ["node", str(GRAPHILE_SCRIPT), "run", str(options.concurrency),
            str(options.poll_interval_ms)]
    return spawn(argv, node_env(url), GRAPHILE_DIR, CACHE_DIR / "graphile-worker.log")


GRAPHILE = System(
    name="graphile-worker", database="bench_graphile",
    add_jobs_sql="""SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
        SELECT ROW('bench-noop', NULL, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
          FROM generate_series(1, %s)))""",
    add_job_sql="SELECT graphile_worker.add_job('bench-noop')",
    prepare=prepare_graphile, start_worker=start_graphile_worker)


# The report and the command line.

def table(results: list[Result]) -> list[str]:
    """One row per figure, one column per system, and ours/theirs when there are two."""
    rows = [("throughput (jobs/s)", [r.jobs_per_s for r in results]),
            *((f"latency p{p} (ms)", [r.latency_ms[i] for r in results])
              for i, p in enumerate((50, 95, 99))),
            ("bulk enqueue, SQL (jobs/s)", [r.enqueue_jobs_per_s for r in results])]
    header = f"{'':26}" + "".join(f"{r.name:>17}" for r in results)
    header += f"{'ours/' + results[1].name:>24}" if len(results) == 2 else ""
    lines = [header]
    for label, values in rows:
        ratio = f"{values[0] / values[1]:>24.2f}" if len(values) == 2 else ""
        lines.append(f"{label:26}" + "".join(f"{v:>17.1f}" for v in values) + ratio)
    return lines


def report(results: list[Result], options: Options, postgres: str) -> str:
    """The printed report: setup, then the table."""
    lines = [
        f"{options.jobs} no-op jobs, one worker process, concurrency {options.concurrency}, "
        f"poll interval {options.poll_interval_ms} ms",
        f"PostgreSQL {postgres}",
        f"pickup latency: {options.latency_jobs} jobs, one every "
        f"{options.latency_interval_ms:g} ms, to an idle worker "
        "(started_at - enqueued_at, database clock)",
    ]
    if len(results) == 2:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        lines.append(f"graphile-worker {GRAPHILE_VERSION} on Node {node.strip()}; "
                     "ratio > 1 means ours is faster for jobs/s, slower for latency")
    return "\n".join([*lines, "", *table(results)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=10_000, help="jobs in the backlog")
    parser.add_argument("--compare", choices=["graphile-worker"], help="also run this system")
    parser.add_argument("--latency-jobs", type=int, default=200, help="jobs sent one by one")
    parser.add_argument("--latency-interval-ms", type=float, default=10.0,
                        help="time between those jobs")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="give up on a workload after this long (default 60 + n/50)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    """Options from the command line and the worker settings (WORKER_CONCURRENCY, ...)."""
    settings = get_settings()
    return Options(jobs=args.jobs, concurrency=settings.worker_concurrency,
                   poll_interval_ms=settings.worker_poll_interval,
                   latency_jobs=args.latency_jobs, latency_interval_ms=args.latency_interval_ms,
                   timeout_s=args.timeout_s or 60 + args.jobs / 50)


def server() -> tuple[str, str]:
    """The configured server, or the embedded one in the cache; and how to describe it."""
    configured = get_settings().database_url
    if configured:
        return configured, "(DATABASE_URL)"
    return embedded_url(CACHE_DIR / "pgdata"), f"(embedded, {CACHE_DIR / 'pgdata'})"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; 1 when it could not complete."""
    args = parse_args(argv)
    options = options_from(args)
    url, where = server()
    systems = [STUDIO, GRAPHILE] if args.compare else [STUDIO]
    try:
        results = [run_system(system, url, options) for system in systems]
    except (BenchError, subprocess.SubprocessError, psycopg.Error) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    print(report(results, options, f"{scalar(url, 'SHOW server_version')} {where}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
