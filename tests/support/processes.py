"""Worker processes started the way operators start them, with their output kept for failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from settings import PROJECT_DIR

BIN = Path(sys.executable).parent


@dataclass
class Process:
    """A command running in its own process group, logging to a file."""

    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group: what a crashed machine or OOM kill looks like."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM the group and wait; SIGKILL if it does not stop in time."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)  # as `docker stop` does: the main process only
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode


def start(argv: list[str], log: Path, env: dict[str, str]) -> Process:
    """Start argv (a command of the venv's bin) with env added to ours."""
    handle = log.open("wb")
    popen = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], cwd=PROJECT_DIR,
                             env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT,
                             start_new_session=True)
    return Process(popen, log)


def run(argv: list[str], env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run argv to completion and capture its output."""
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=PROJECT_DIR, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout_s)
