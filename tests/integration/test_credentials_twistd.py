"""
S3 credential sources through the real ``twistd yatagarasu``, against moto with signature
checking on: the credentials each source yields really sign the requests moto accepts.

Instance metadata (IMDSv2) and the ECS endpoint are the test's own small services on
127.0.0.1 handing out temporary credentials of a moto role (moto checks their session token);
web identity goes to moto's STS; env and profile files come from the test. Also: the metadata
service down at start (``/ready`` 503, requests 503 with ``Retry-After``), then up (served
without a restart), a replica without credentials failing over, and no secret in the log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.json_service import JsonCall, JsonService, json_service
from devharness.moto_s3 import MotoS3Server
from devharness.ports import free_port
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until

BODY = b"signed with fetched credentials"
IMDS_TOKEN = "imds-session-token-" + "q" * 20
ECS_TOKEN = "ecs-authorization-token-" + "e" * 20
ROLE = "yatagarasu-instance-role"

StartProxy = Callable[..., ProxyProcess]


@pytest.fixture
def stored(moto_s3: MotoS3Server, s3_bucket: str) -> str:
    moto_s3.put_object(s3_bucket, "doc.txt", BODY, content_type="text/plain")
    return s3_bucket


@pytest.fixture
def temporary(moto_s3: MotoS3Server) -> dict[str, str]:
    """Temporary credentials of a new moto role (``AccessKeyId``, ``SecretAccessKey``...)."""
    return moto_s3.temporary_credentials(f"role-{uuid.uuid4().hex[:12]}")


def metadata_answer(creds: dict[str, str]) -> Callable[[JsonCall], tuple[int, Any]]:
    """IMDSv2: a session token from ``PUT /latest/api/token``, required by every GET."""
    roles = "/latest/meta-data/iam/security-credentials/"

    def answer(call: JsonCall) -> tuple[int, Any]:
        if call.method == "PUT" and call.path == "/latest/api/token":
            if not call.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                return 400, "missing TTL"
            return 200, IMDS_TOKEN
        if call.headers.get("x-aws-ec2-metadata-token") != IMDS_TOKEN:
            return 401, "unauthorized"
        if call.path == roles:
            return 200, ROLE + "\n"
        if call.path == roles + ROLE:
            return 200, {**creds, "Type": "AWS-HMAC", "LastUpdated": "2026-01-01T00:00:00Z"}
        return 404, "not found"

    return answer


def s3_entry(
    moto: MotoS3Server, bucket: str, credentials: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    entry = bucket_config(moto, "b", bucket, **extra)
    del entry["s3"]["access_key"], entry["s3"]["secret_key"]
    if credentials:
        entry["s3"]["credentials"] = credentials
    return entry


def start(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    entries: list[dict[str, Any]],
    env: dict[str, str] | None = None,
) -> ProxyProcess:
    return proxy(make_proxy_config(entries), env=env)


def credentials_of(process: ProxyProcess, replica: str = "primary") -> dict[str, Any]:
    ready = json.loads(process.get("/ready").body)
    found: dict[str, Any] = ready["backends"]["b"]["replicas"][replica]["credentials"]
    return found


def served(process: ProxyProcess) -> None:
    response = process.get("/b/doc.txt")
    assert response.status == 200, response.body
    assert response.body == BODY


def no_secret_logged(process: ProxyProcess, *secrets: str) -> None:
    log = process.log_text()
    for secret in secrets:
        assert secret not in log


@pytest.fixture
def metadata(temporary: dict[str, str]) -> Iterator[JsonService]:
    with json_service(metadata_answer(temporary)) as service:
        yield service


def test_instance_role_credentials_from_imdsv2_sign_requests_moto_accepts(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
    temporary: dict[str, str],
    metadata: JsonService,
) -> None:
    entry = s3_entry(moto_s3, stored, {"source": "instance", "metadata_endpoint": metadata.url})
    process = start(proxy, make_proxy_config, [entry])
    wait_until(lambda: credentials_of(process)["state"] == "ready", timeout=20, what="IMDS")
    served(process)
    status = credentials_of(process)
    assert status["source"] == "instance" and status["last_error"] is None
    assert 0 < status["expires_in_seconds"] <= 3600
    first, *rest = metadata.calls
    assert (first.method, first.path) == ("PUT", "/latest/api/token")
    assert first.headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert [(c.method, c.path.rsplit("/", 1)[-1]) for c in rest] == [("GET", ""), ("GET", ROLE)]
    assert (
        process.metric(
            'yatagarasu_credentials_refresh_total{bucket="b",replica="primary",result="ok",'
            'source="instance"}'
        )
        == 1
    )
    no_secret_logged(process, temporary["SecretAccessKey"], temporary["Token"], IMDS_TOKEN)


def test_metadata_service_down_at_start_then_up_is_served_without_a_restart(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
    temporary: dict[str, str],
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    entry = s3_entry(moto_s3, stored, {"source": "instance"})
    # the SDKs' variable, as an operator would set it
    process = start(
        proxy, make_proxy_config, [entry], env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint}
    )
    wait_until(lambda: credentials_of(process)["state"] == "failed", timeout=20, what="failure")
    ready = process.get("/ready")
    assert ready.status == 503 and json.loads(ready.body)["status"] == "unavailable"
    assert "cannot connect" in credentials_of(process)["last_error"]
    refused = process.get("/b/doc.txt")
    assert refused.status == 503
    assert int(refused.header("Retry-After") or "0") >= 1
    error = json.loads(refused.body)
    assert error["status"] == 503 and "request_id" in error
    assert error["message"].startswith("no usable S3 credentials (source instance)")
    with json_service(metadata_answer(temporary), port=port):
        # retried with backoff (at most a minute apart): no restart, no reload
        wait_until(lambda: process.get("/ready").status == 200, timeout=90, what="recovery")
        served(process)
    log = process.log_text()
    assert log.count("Cannot fetch S3 credentials of bucket b replica primary") == 1
    assert "fetched again after" in log
    assert (
        process.metric(
            'yatagarasu_credentials_refresh_total{bucket="b",replica="primary",result="error",'
            'source="instance"}'
        )
        >= 1
    )
    no_secret_logged(process, temporary["SecretAccessKey"], temporary["Token"])


def test_ecs_task_role_credentials_with_the_authorization_token_file(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
    temporary: dict[str, str],
    tmp_path: Path,
) -> None:
    def answer(call: JsonCall) -> tuple[int, Any]:
        if call.headers.get("authorization") != ECS_TOKEN:
            return 401, {"message": "no token"}
        return (200, temporary) if call.path == "/v2/credentials/task" else (404, {})

    token_file = tmp_path / "ecs-token"
    token_file.write_text(ECS_TOKEN + "\n")
    with json_service(answer) as ecs:
        env = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{ecs.url}/v2/credentials/task",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        }
        # no source: the standard chain finds the container's variables
        process = start(proxy, make_proxy_config, [s3_entry(moto_s3, stored, {})], env=env)
        wait_until(lambda: credentials_of(process)["state"] == "ready", timeout=20, what="ECS")
        served(process)
        assert credentials_of(process)["source"] == "ecs"
        assert [c.headers["authorization"] for c in ecs.calls] == [ECS_TOKEN]
    no_secret_logged(process, temporary["SecretAccessKey"], temporary["Token"], ECS_TOKEN)


def test_web_identity_assumes_the_role_with_moto_sts(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
    tmp_path: Path,
) -> None:
    arn = moto_s3.create_role(f"irsa-{uuid.uuid4().hex[:12]}")
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln\n")
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_ARN": arn}
    entry = s3_entry(
        moto_s3, stored, {"source": "web_identity", "sts_endpoint": moto_s3.endpoint_url}
    )
    # AssumeRoleWithWebIdentity is not signed (as on AWS), and moto with auth on refuses
    # every unsigned call: auth is off only until the proxy has its credentials
    moto_s3.set_auth(False)
    try:
        process = start(proxy, make_proxy_config, [entry], env=env)
        wait_until(lambda: credentials_of(process)["state"] == "ready", timeout=20, what="STS")
    finally:
        moto_s3.set_auth(True)
    served(process)  # signed with the role's temporary credentials, session token checked
    status = credentials_of(process)
    assert status["source"] == "web_identity" and 0 < status["expires_in_seconds"] <= 3600
    unsigned = moto_s3.client("s3", "ASIAWRONGWRONGWRONG", "x")
    with pytest.raises(Exception, match=r"InvalidAccessKeyId|403|Forbidden"):
        unsigned.get_object(Bucket=stored, Key="doc.txt")


def test_env_credentials_with_a_session_token(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
    temporary: dict[str, str],
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": temporary["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": temporary["SecretAccessKey"],
        "AWS_SESSION_TOKEN": temporary["Token"],
    }
    process = start(proxy, make_proxy_config, [s3_entry(moto_s3, stored, {})], env=env)
    served(process)
    assert credentials_of(process)["source"] == "env"
    no_secret_logged(process, temporary["SecretAccessKey"], temporary["Token"])
    # the token is checked: a wrong one is refused by moto (its 400 InvalidToken passed back)
    env["AWS_SESSION_TOKEN"] = "not-the-token"
    wrong = start(proxy, make_proxy_config, [s3_entry(moto_s3, stored, {})], env=env)
    refused = wrong.get("/b/doc.txt")
    assert refused.status == 400 and json.loads(refused.body)["s3_code"] == "InvalidToken"


def test_profile_from_the_shared_credentials_file(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
    tmp_path: Path,
) -> None:
    access, secret = moto_s3.create_credentials(f"profile-{uuid.uuid4().hex[:12]}", ["s3:*"])
    files = tmp_path / "aws-credentials"
    files.write_text(
        "[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = wrong\n"
        f"[reader]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"
    )
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(files), "AWS_PROFILE": "reader"}
    entry = s3_entry(moto_s3, stored, {"source": "profile"})
    process = start(proxy, make_proxy_config, [entry], env=env)
    served(process)
    assert credentials_of(process)["source"] == "profile"
    no_secret_logged(process, secret)


def test_a_replica_without_credentials_fails_over_to_the_next(
    proxy: StartProxy,
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    stored: str,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    replicas = [
        {
            "name": "imds",
            "bucket": stored,
            "priority": 1,
            "endpoint": moto_s3.endpoint_url,
            "credentials": {"source": "instance", "metadata_endpoint": dead},
        },
        {
            "name": "keys",
            "bucket": stored,
            "priority": 2,
            "endpoint": moto_s3.endpoint_url,
            "access_key": moto_s3.access_key,
            "secret_key": moto_s3.secret_key,
        },
    ]
    entry = bucket_config(moto_s3, "b", stored)
    for key in ("bucket", "endpoint", "access_key", "secret_key"):
        del entry["s3"][key]
    entry["s3"]["replicas"] = replicas
    entry["s3"]["circuit_breaker"] = {"failure_threshold": 1}
    process = start(proxy, make_proxy_config, [entry])
    served(process)  # at once: the other replica's credentials are not waited for
    wait_until(
        lambda: credentials_of(process, "imds")["state"] == "failed", timeout=20, what="failure"
    )
    for _ in range(3):
        served(process)
    ready = json.loads(process.get("/ready").body)
    imds = ready["backends"]["b"]["replicas"]["imds"]
    assert imds["credentials"]["state"] == "failed"
    assert imds["state"] == "closed" and imds["consecutive_failures"] == 0
    assert ready["status"] == "ready"
