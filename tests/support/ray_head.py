"""A local Ray head on loopback for tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.service_process import (
    LOOPBACK,
    RAY,
    ServiceStartError,
    _child_env,
    _Stoppable,
    free_ports,
    kill_pids,
    log_tail,
    session_pids,
    wait_until,
)


@dataclass(frozen=True)
class RayHead(_Stoppable):
    """A local Ray head; `address` is the dashboard URL that JobSubmissionClient takes."""

    address: str
    gcs_address: str
    temp_dir: Path = field(repr=False)
    session_id: int = field(repr=False)

    def stop(self) -> None:
        """Kill every process of this head (not other Ray instances) and remove its temp dir."""
        # A second pass catches workers the raylet forked while the first one ran.
        for _ in range(3):
            if not (pids := session_pids(self.session_id, str(self.temp_dir))):
                break
            kill_pids(pids)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# Ports set by `ray start` flags, then the metrics ports only the environment sets (their
# defaults 44217 and 44227 are fixed, so a second head would clash on them).
RAY_PORT_FLAGS = (
    "port", "dashboard-port", "ray-client-server-port", "object-manager-port", "node-manager-port",
    "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
    "metrics-export-port",
)  # fmt: skip
RAY_PORT_ENV = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def _ray_ports(worker_ports: int) -> tuple[dict[str, int], dict[str, str], list[int]]:
    """Choose every port a Ray head opens: flags, environment, then one per worker process."""
    named = len(RAY_PORT_FLAGS) + len(RAY_PORT_ENV)
    ports = free_ports(named + worker_ports)
    flags = dict(zip(RAY_PORT_FLAGS, ports, strict=False))
    env = dict(zip(RAY_PORT_ENV, map(str, ports[len(RAY_PORT_FLAGS) : named]), strict=True))
    return flags, env, ports[named:]


def _ray_command(temp_dir: Path, ports: dict[str, int], worker_ports: list[int]) -> list[str]:
    return [
        str(RAY), "start", "--head", "--node-ip-address", LOOPBACK, "--dashboard-host", LOOPBACK,
        "--num-cpus", "1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
        *(f"--{flag}={port}" for flag, port in ports.items()),
        "--worker-port-list=" + ",".join(map(str, worker_ports)),
    ]  # fmt: skip


def _jobs_api_answers(address: str) -> bool:
    try:
        return httpx.get(f"{address}/api/jobs/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_ray_head(timeout_s: float = 90.0, worker_ports: int = 16) -> RayHead:
    """Run `ray start --head` on free loopback ports; wait until the dashboard's job API answers."""
    # Unix socket paths under the temp dir must stay short (108 bytes), hence /tmp and a short name.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    ports, port_env, workers = _ray_ports(worker_ports)
    env = _child_env(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0", TMPDIR=str(temp_dir), **port_env,
    )  # fmt: skip
    with open(temp_dir / "ray-start.log", "wb") as log:
        starter = subprocess.Popen(
            _ray_command(temp_dir, ports, workers), env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    # `ray start` leads a new session that all head processes inherit: that scopes stop().
    dashboard, gcs = f"http://{LOOPBACK}:{ports['dashboard-port']}", f"{LOOPBACK}:{ports['port']}"
    head = RayHead(dashboard, gcs, temp_dir, starter.pid)
    try:
        _wait_for_ray(head, starter, timeout_s)
    except BaseException:
        head.stop()
        raise
    return head


def _wait_for_ray(head: RayHead, starter: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with suppress(subprocess.TimeoutExpired):
        starter.wait(timeout_s)
    tail = log_tail(head.temp_dir / "ray-start.log")
    if starter.returncode != 0:
        raise ServiceStartError(f"`ray start` exit code {starter.returncode}:\n{tail}")
    if not wait_until(lambda: _jobs_api_answers(head.address), deadline - time.monotonic()):
        dashboard = log_tail(head.temp_dir / "session_latest" / "logs" / "dashboard.log")
        raise ServiceStartError(f"Ray job API not up in {timeout_s}s:\n{tail}\n{dashboard}")
