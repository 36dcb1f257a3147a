"""`studio`: migrate the database, run workers, ping them, and run everything for development."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer

from clients.postgres import connect, embedded_url
from settings import PROJECT_DIR, Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Inference Studio background jobs.")

RUNNABLE = """
SELECT EXISTS (
    SELECT 1 FROM dramatiq.queue
     WHERE queue_name = ANY(%s)
       AND ((state = 'queued' AND available_at <= now())
            OR (state = 'consumed' AND worker_id = %s)))
"""


def database_url(settings: Settings) -> str:
    """The configured database, or the embedded one (started now) when none is configured."""
    return settings.database_url or embedded_url(settings.embedded_pg_dir)


def _share_database(settings: Settings) -> str:
    """Resolve the database once and hand it to child processes (dramatiq's workers)."""
    url = database_url(settings)
    os.environ["DATABASE_URL"] = url
    return url


@app.command()
def migrate() -> None:
    """Create or upgrade the broker and job schemas, then register the actors."""
    settings = get_settings()
    from db.migrate import migrate as apply

    url = _share_database(settings)
    applied = apply(url)
    typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied
               else "database schema is up to date")
    _register_actors(url)


def _register_actors(url: str) -> None:
    import actors  # its broker reads DATABASE_URL, which _share_database set
    from actors.middleware import actor_infos
    from jobs import store

    with connect(url) as conn:
        store.register_actors(conn, actor_infos(actors.broker))
    typer.echo(f"registered actors: {', '.join(sorted(actors.broker.actors))}")


@app.command()
def worker(
    modules: Annotated[list[str] | None, typer.Argument(
        help="actor modules to load (default: actors)")] = None,
    reload: Annotated[bool, typer.Option(help="restart when code changes (development)")] = False,
    once: Annotated[bool, typer.Option(help="run until no runnable job is left, then exit")] = False,
    processes: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
) -> None:
    """Run jobs with WORKER_CONCURRENCY threads, polling every WORKER_POLL_INTERVAL ms."""
    settings = get_settings()
    _share_database(settings)
    modules = modules or ["actors"]
    if once:
        raise typer.Exit(run_once(settings, modules))
    if reload:
        raise typer.Exit(run_reloading(modules, processes))
    raise typer.Exit(run_dramatiq(settings, modules, processes=processes))


SOURCES = ("actors", "pipelines", "clients", "jobs", "db", "admin", "settings.py", "cli.py")


def run_reloading(modules: list[str], processes: int) -> int:
    """Run the worker in a child process and restart it whenever our source changes."""
    import shlex

    import watchfiles

    paths = [PROJECT_DIR / p for p in SOURCES if (PROJECT_DIR / p).exists()]
    command = shlex.join([sys.executable, "-m", "cli", "worker", *modules,
                          "--processes", str(processes)])
    # SIGINT lets running jobs finish (up to 30 s) before the restart.
    return watchfiles.run_process(*paths, target=command, target_type="command",
                                  sigint_timeout=30, callback=_say_reloading)


def _say_reloading(changes: set[tuple[object, str]]) -> None:
    typer.echo(f"code changed ({', '.join(sorted(p for _, p in changes))}): restarting the worker",
               err=True)


def run_dramatiq(settings: Settings, modules: list[str], *, processes: int) -> int:
    """Hand over to Dramatiq's own CLI with our settings applied."""
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    argv = [*modules, "--processes", str(processes),
            "--threads", str(settings.worker_concurrency), "--path", str(PROJECT_DIR)]
    return int(dramatiq_main(make_argument_parser().parse_args(argv)) or 0)


def run_once(settings: Settings, modules: list[str]) -> int:
    """Process jobs in this process until none is runnable (Graphile Worker's --once)."""
    import importlib

    import dramatiq

    for module in modules:
        importlib.import_module(module)
    broker = dramatiq.get_broker()
    broker.emit_after("process_boot")  # what Dramatiq's CLI does first: starts the time limits
    worker = dramatiq.Worker(broker, worker_threads=settings.worker_concurrency,
                             worker_timeout=100)
    worker.start()
    try:
        _wait_until_idle(broker, settings.poll_interval_s)
    finally:
        worker.stop()
    return 0


def _wait_until_idle(broker: object, poll_interval_s: float) -> None:
    queues = sorted({q for name in broker.queues for q in (name, f"{name}.DQ")})  # type: ignore[attr-defined]
    idle_checks = 0
    while idle_checks < 2:  # twice in a row: a job may be between claim and start
        time.sleep(poll_interval_s)
        with broker.pool.connection() as conn:  # type: ignore[attr-defined]
            row = conn.execute(RUNNABLE, (queues, broker.worker_id)).fetchone()  # type: ignore[attr-defined]
        idle_checks = 0 if row and row[0] else idle_checks + 1


@app.command()
def ping(timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait")] = 30.0) -> None:
    """Send the `ping` job and wait until a worker has run it (exit 1 if none did in time)."""
    settings = get_settings()
    url = _share_database(settings)
    from actors.system import ping as ping_actor

    message = ping_actor.send()
    deadline = time.monotonic() + timeout_s
    with connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT status FROM studio.job WHERE message_id = %s",
                               (uuid.UUID(message.message_id),)).fetchone()
            if row and row[0] == "completed":
                typer.echo(f"pong: job {message.message_id} ran")
                return
            time.sleep(0.2)
    typer.echo(f"no worker ran job {message.message_id} within {timeout_s:g} s", err=True)
    raise typer.Exit(1)


@app.command()
def health(
    worker_alive: Annotated[bool, typer.Option("--worker", help="also require a live worker")] = False,
) -> None:
    """Exit 0 when the database answers, its schema is current and (--worker) a worker heartbeats."""
    settings = get_settings()
    from db.migrate import pending_migrations

    url = database_url(settings)
    problems = [f"migration {m} not applied (run studio migrate)" for m in pending_migrations(url)]
    if worker_alive and not _live_workers(url, settings.worker_heartbeat_ttl_s):
        problems.append(f"no worker heartbeat in the last {settings.worker_heartbeat_ttl_s:g} s")
    for problem in problems:
        typer.echo(problem, err=True)
    raise typer.Exit(1 if problems else 0)


def _live_workers(url: str, ttl_s: float) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM dramatiq.worker WHERE heartbeat_at > "
                           "now() - make_interval(secs => %s)", (ttl_s,)).fetchone()
    return int(row[0]) if row else 0


@app.command()
def dev() -> None:
    """Everything on embedded defaults: migrate, then run the worker (Ctrl-C stops)."""
    settings = get_settings()
    _share_database(settings)
    migrate()
    typer.echo(f"worker: {settings.worker_concurrency} threads, "
               f"poll {settings.worker_poll_interval} ms; database {os.environ['DATABASE_URL']}")
    raise typer.Exit(run_dramatiq(get_settings(), ["actors"], processes=1))


def main() -> None:
    """Console-script entry point."""
    sys.path.insert(0, str(Path(PROJECT_DIR)))
    app()


if __name__ == "__main__":
    main()
