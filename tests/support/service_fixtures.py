"""Pytest fixtures for the real local services other than PostgreSQL (see services.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.http_peer import HttpPeer
from tests.support.ray_head import RayHead, start_ray_head
from tests.support.s3_server import S3Server, start_s3_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A seaweedfs S3 server with real SigV4 auth, shared by the session."""
    with start_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """The name of a fresh, empty bucket created for this test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client = s3_server.client()
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """A local Ray head (1 CPU) shared by the session; submit jobs to `ray_head.address`."""
    with start_ray_head() as head:
        yield head


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    """A loopback HTTP server with no routes yet; register them with `http_peer.route(...)`."""
    with HttpPeer() as peer:
        yield peer
