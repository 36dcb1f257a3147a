"""A real S3-compatible server (seaweedfs) with SigV4 auth, on loopback, for tests."""

from __future__ import annotations

import itertools
import secrets
import shutil
import subprocess
import tempfile
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

from tests.support.service_process import (
    LOOPBACK,
    WEED,
    WEED_COMPONENTS,
    WEED_GRPC_OFFSET,
    ServiceStartError,
    _child_env,
    _Stoppable,
    free_port_pair,
    free_ports,
    log_tail,
    stop_process_group,
    wait_until,
)


@dataclass(frozen=True)
class S3Server(_Stoppable):
    """A real seaweedfs S3 endpoint with SigV4 auth, bound to loopback."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    workdir: Path = field(repr=False)
    grpc_ports: tuple[int, ...] = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def client(self, secret_access_key: str | None = None) -> S3Client:
        """Return a boto3 client (SigV4, path-style); pass a wrong secret to test auth."""
        config = Config(
            signature_version="s3v4", s3={"addressing_style": "path"},
            retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30,
        )  # fmt: skip
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the whole process group and remove the data directory."""
        stop_process_group(self.process)
        # A hard-killed weed leaves its gRPC unix sockets in /tmp, named after its ports.
        for name, port in itertools.product(WEED_COMPONENTS, self.grpc_ports):
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _weed_port_flags() -> tuple[dict[str, int], tuple[int, ...]]:
    """Choose every port `weed mini` opens; return the flags and the gRPC ports."""
    names = [f"{c}.port{grpc}" for c in WEED_COMPONENTS[:-1] for grpc in ("", ".grpc")]
    flags = dict(zip(names, free_ports(len(names)), strict=True))
    admin = free_port_pair(WEED_GRPC_OFFSET, avoid=set(flags.values()))
    flags |= {"admin.port": admin, "admin.port.grpc": admin + WEED_GRPC_OFFSET}
    return flags, tuple(port for flag, port in flags.items() if flag.endswith(".grpc"))


def _weed_command(workdir: Path, ports: dict[str, int]) -> list[str]:
    """The `weed mini` command line: loopback only, every port explicit, extras off."""
    options = {
        "dir": workdir / "data", "ip": LOOPBACK, "ip.bind": LOOPBACK, "master.telemetry": "false",
        "webdav": "false", "admin.ui": "false", "volume.preStopSeconds": 0,
        "s3.port.iceberg": 0, "s3.port.lance": 0,  # 0 disables them
        # Without these, weed puts its unix sockets in /tmp and leaves some behind.
        "filer.localSocket": workdir / "filer.sock", "s3.localSocket": workdir / "s3.sock",
        **ports,
    }  # fmt: skip
    return [str(WEED), f"-logdir={workdir}", "mini", *(f"-{k}={v}" for k, v in options.items())]


def _s3_answers(server: S3Server) -> bool:
    if server.process.poll() is not None:
        raise ServiceStartError(f"weed exited early:\n{log_tail(server.workdir / 'weed.log')}")
    with closing(server.client()) as client, suppress(Exception):
        client.list_buckets()  # fails while the port is closed or auth is not loaded yet
        return True
    return False


def start_s3_server(timeout_s: float = 30.0, region: str = "us-east-1") -> S3Server:
    """Start `weed mini` on free loopback ports with a random key pair; wait until S3 answers."""
    workdir = Path(tempfile.mkdtemp(prefix="s3-"))
    ports, grpc_ports = _weed_port_flags()
    key_id, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    env = _child_env(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, TMPDIR=str(workdir))
    with open(workdir / "weed.log", "wb") as log:
        process = subprocess.Popen(
            _weed_command(workdir, ports), cwd=workdir, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    url = f"http://{LOOPBACK}:{ports['s3.port']}"
    server = S3Server(url, key_id, secret, region, workdir, grpc_ports, process)
    try:
        if not wait_until(lambda: _s3_answers(server), timeout_s, interval_s=0.2):
            tail = log_tail(workdir / "weed.log")
            raise ServiceStartError(f"S3 not up in {timeout_s}s:\n{tail}")
    except BaseException:
        server.stop()
        raise
    return server
