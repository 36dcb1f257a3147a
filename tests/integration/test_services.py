"""The local-service fixtures work for real: S3 with auth, a Ray head that runs jobs, HTTP peers."""

from __future__ import annotations

import sys
import time

import httpx
import pytest
from botocore.exceptions import ClientError
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.support.http_peer import HttpPeer, PeerReply, PeerRequest
from tests.support.ray_head import RayHead
from tests.support.s3_server import S3Server


def test_an_object_written_through_the_s3_server_reads_back_identical(
    s3_server: S3Server, s3_bucket: str
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    s3 = s3_server.client()
    try:
        s3.put_object(Bucket=s3_bucket, Key="uploads/data.bin", Body=payload)
        head = s3.head_object(Bucket=s3_bucket, Key="uploads/data.bin")
        body = s3.get_object(Bucket=s3_bucket, Key="uploads/data.bin")["Body"].read()
    finally:
        s3.close()
    assert head["ContentLength"] == len(payload)
    assert body == payload


def test_the_s3_server_rejects_a_wrong_secret_key(s3_server: S3Server, s3_bucket: str) -> None:
    intruder, s3 = s3_server.client(secret_access_key="not-the-secret"), s3_server.client()
    try:
        with pytest.raises(ClientError) as raised:
            intruder.put_object(Bucket=s3_bucket, Key="intruder.txt", Body=b"x")
        listing = s3.list_objects_v2(Bucket=s3_bucket)
    finally:
        intruder.close()
        s3.close()
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert raised.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert listing["KeyCount"] == 0


@pytest.mark.ray
@pytest.mark.slow
def test_a_trivial_ray_job_submitted_to_the_local_head_reaches_succeeded(ray_head: RayHead) -> None:
    client = JobSubmissionClient(ray_head.address)
    job_id = client.submit_job(entrypoint=f"{sys.executable} -c 'print(42)'")
    deadline = time.monotonic() + 60
    while not (status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {status} after 60 s"
        time.sleep(0.25)
    assert status == JobStatus.SUCCEEDED
    assert "42" in client.get_job_logs(job_id).splitlines()


def _accept_email(request: PeerRequest) -> PeerReply:
    return 200, {"X-Request-Id": "req-1"}, {"id": f"email-for-{request.json['to'][0]}"}


def test_a_local_http_peer_answers_a_registered_route_and_records_the_request(
    http_peer: HttpPeer,
) -> None:
    http_peer.route("POST", "/emails", _accept_email)
    email = {"from": "studio@example.com", "to": ["ada@example.com"], "subject": "Done"}
    idempotency = {"Idempotency-Key": "k-1"}
    response = httpx.post(f"{http_peer.url}/emails?dry=1", json=email, headers=idempotency)
    assert (response.status_code, response.json()) == (200, {"id": "email-for-ada@example.com"})
    assert response.headers["x-request-id"] == "req-1"
    (received,) = http_peer.requests
    assert (received.method, received.path, received.query) == ("POST", "/emails", {"dry": ["1"]})
    assert received.headers["idempotency-key"] == "k-1"
    assert received.json == email


def test_a_local_http_peer_answers_an_unknown_route_with_a_json_404_and_records_it(
    http_peer: HttpPeer,
) -> None:
    http_peer.route("POST", "/emails", _accept_email)
    response = httpx.get(f"{http_peer.url}/api/public/traces/t-1")
    assert response.status_code == 404
    assert response.json() == {"error": "no route for GET /api/public/traces/t-1"}
    assert [(r.method, r.path) for r in http_peer.requests] == [("GET", "/api/public/traces/t-1")]


def test_a_local_http_peer_passes_path_placeholders_to_the_handler(http_peer: HttpPeer) -> None:
    http_peer.route(
        "GET",
        "/api/public/traces/{trace_id}",
        lambda request: (200, {}, {"id": request.path_params["trace_id"]}),
    )
    response = httpx.get(f"{http_peer.url}/api/public/traces/t-42")
    assert response.json() == {"id": "t-42"}
