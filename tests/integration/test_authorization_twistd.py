"""
Authorization through the real ``twistd yatagarasu``, against moto (SigV4 checked) and the
test's own small HTTP services speaking OPA's data API (``POST /v1/data/<path>`` with
``{"input": ...}`` → ``{"result": ...}``) and OpenFGA's Check (``POST /stores/<id>/check`` with
``{"tuple_key": {...}, "authorization_model_id": ...}`` → ``{"allowed": ...}``): allowed,
denied, the policy service down (fail closed and open), too slow, decisions cached (the
service's call count), the metrics, a third-party authorizer plugin, and hot reload.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from devharness.json_service import JsonCall, JsonService, json_service
from devharness.moto_s3 import MotoS3Server
from devharness.ports import free_port
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess, TwistdResult
from tests.integration.test_reload_twistd import rewrite, sighup_and_wait

SECRET = "authorization-secret-" + "z" * 48
POLICY = "yatagarasu/authz/allow"
STORE = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
MODEL = "01HXJR6WBQD3ABCDEFGHIJKLMN"
FGA_TOKEN = "fga-api-token-" + "t" * 20
#: the tuples the OpenFGA fake knows
TUPLES = {("user:alice", "viewer", "file:fga/doc.txt")}


def token(subject: str, **claims: Any) -> dict[str, str]:
    payload = {"sub": subject, "exp": int(time.time()) + 3600, **claims}
    return {"Authorization": f"Bearer {jwt.encode(payload, SECRET, algorithm='HS256')}"}


def opa_answer(call: JsonCall) -> tuple[int, Any]:
    """The policy ``yatagarasu.authz.allow``: alice, or anyone in group readers, reads docs/*."""
    if call.path != f"/v1/data/{POLICY}":
        return 200, {}  # an undefined document, as OPA answers it
    document = call.body.get("input", {})
    claims = document.get("jwt_claims", {})
    allowed = (document.get("subject") == "alice" or "readers" in claims.get("groups", [])) and str(
        document.get("key", "")
    ).startswith("docs/")
    return 200, {"result": allowed}


def openfga_answer(call: JsonCall) -> tuple[int, Any]:
    if call.headers.get("authorization") != f"Bearer {FGA_TOKEN}":
        return 401, {"code": "unauthenticated", "message": "unauthenticated"}
    if call.path != f"/stores/{STORE}/check":
        return 404, {"code": "store_id_not_found", "message": "store not found"}
    if call.body.get("authorization_model_id") != MODEL:
        return 400, {"code": "authorization_model_not_found", "message": "no such model"}
    key = call.body.get("tuple_key", {})
    allowed = (key.get("user"), key.get("relation"), key.get("object")) in TUPLES
    return 200, {"allowed": allowed, "resolution": ""}


class Slow:
    """An OPA that answers after a while (longer than the bucket's opa_timeout_ms)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, call: JsonCall) -> tuple[int, Any]:
        self.release.wait(5)
        return 200, {"result": True}


@pytest.fixture
def services() -> Iterator[tuple[JsonService, JsonService, JsonService, Slow]]:
    slow = Slow()
    with (
        json_service(opa_answer) as opa,
        json_service(openfga_answer) as fga,
        json_service(slow) as slow_opa,
    ):
        yield opa, fga, slow_opa, slow
        slow.release.set()


@pytest.fixture
def setup(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    services: tuple[JsonService, JsonService, JsonService, Slow],
) -> tuple[ProxyProcess, JsonService, JsonService, JsonService]:
    opa, fga, slow_opa, _ = services
    for key in ("docs/a.txt", "secret/b.txt", "doc.txt", "alice/own.txt", "public/p.txt"):
        moto_s3.put_object(s3_bucket, key, f"body of {key}\n".encode())
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def b(name: str, authorization: dict[str, Any]) -> dict[str, Any]:
        return bucket_config(
            moto_s3, name, s3_bucket, auth={"enabled": True}, authorization=authorization
        )

    def opa_at(url: str, **extra: Any) -> dict[str, Any]:
        return {"type": "opa", "opa_url": url, "opa_policy_path": POLICY, **extra}

    config = {
        "logging": {"format": "json"},
        "jwt": {"secret": "${JWT_SECRET}"},
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1}},
        "buckets": [
            b("opa", opa_at(opa.url, opa_cache_ttl_seconds=0)),
            b("cached", opa_at(opa.url, opa_cache_ttl_seconds=300)),
            b("closed", opa_at(down)),
            b("open", opa_at(down, opa_fail_mode="open")),
            b("slow", opa_at(slow_opa.url, opa_timeout_ms=200)),
            b(
                "fga",
                {
                    "type": "openfga",
                    "openfga_endpoint": fga.url,
                    "openfga_store_id": STORE,
                    "openfga_authorization_model_id": MODEL,
                    "openfga_api_token": "${FGA_TOKEN}",
                    "openfga_cache_ttl_seconds": 0,
                },
            ),
            b(
                "fga_bad",
                {
                    "type": "openfga",
                    "openfga_endpoint": fga.url,
                    "openfga_store_id": "01NOSUCHSTORE0000000000000",
                    "openfga_authorization_model_id": MODEL,
                    "openfga_api_token": "${FGA_TOKEN}",
                },
            ),
            b("owned", {"type": "owner_prefix", "shared_prefixes": ["public/"]}),
        ],
    }
    running = proxy(config, env={"JWT_SECRET": SECRET, "FGA_TOKEN": FGA_TOKEN})
    return running, opa, fga, slow_opa


Setup = tuple[ProxyProcess, JsonService, JsonService, JsonService]


def test_opa_allows_and_denies_from_the_input_document(setup: Setup) -> None:
    running, opa, _, _ = setup
    allowed = running.get("/opa/docs/a.txt", headers=token("alice", groups=["staff"]))
    assert (allowed.status, allowed.body) == (200, b"body of docs/a.txt\n")
    (call,) = opa.calls
    assert (call.method, call.path) == ("POST", f"/v1/data/{POLICY}")
    assert call.headers["content-type"] == "application/json"
    document = call.body["input"]
    assert {
        k: document[k] for k in ("subject", "bucket", "key", "path", "method", "client_ip")
    } == {
        "subject": "alice",
        "bucket": "opa",
        "key": "docs/a.txt",
        "path": "docs/a.txt",
        "method": "GET",
        "client_ip": "127.0.0.1",
    }
    assert document["jwt_claims"]["groups"] == ["staff"]
    denied = running.get("/opa/secret/b.txt", headers=token("alice"))
    assert denied.status == 403
    assert denied.json()["message"] == "denied by opa"
    assert denied.json()["request_id"] == denied.header("X-Request-ID")
    head = running.request("HEAD", "/opa/docs/a.txt", headers=token("bob", groups=["readers"]))
    assert (head.status, head.body) == (200, b"")
    assert opa.calls[-1].body["input"]["method"] == "HEAD"
    assert running.get("/opa/docs/a.txt", headers=token("bob")).status == 403
    assert running.get("/opa/docs/a.txt").status == 401  # authentication first
    assert len(opa.calls) == 4


def test_a_cached_decision_avoids_a_second_call(setup: Setup) -> None:
    running, opa, _, _ = setup
    headers = token("alice")
    first = running.get("/cached/docs/a.txt", headers=headers)
    second = running.get("/cached/docs/a.txt", headers=headers)
    assert [r.status for r in (first, second)] == [200, 200]
    assert second.header("X-Cache") == "HIT"
    assert len(opa.calls) == 1
    assert running.get("/cached/secret/b.txt", headers=headers).status == 403
    assert running.get("/cached/secret/b.txt", headers=headers).status == 403
    assert len(opa.calls) == 2
    series = 'yatagarasu_authorization_decisions_total{authorizer="opa",bucket="cached",'
    assert running.metric(series + 'decision="allow",result="allow"}') == 1
    assert running.metric(series + 'decision="allow",result="cached"}') == 1
    assert running.metric(series + 'decision="deny",result="cached"}') == 1


def test_opa_down_fails_closed_by_default_and_open_when_asked(setup: Setup) -> None:
    running, _, _, _ = setup
    closed = running.get("/closed/docs/a.txt", headers=token("alice"))
    assert running.get("/closed/docs/a.txt", headers=token("bob")).status == 503
    assert closed.status == 503
    assert closed.header("Retry-After") == "1"
    assert closed.json()["message"] == "authorization service unavailable (opa)"
    opened = running.get("/open/secret/b.txt", headers=token("anyone"))
    assert (opened.status, opened.body) == (200, b"body of secret/b.txt\n")
    assert running.get("/open/docs/a.txt").status == 401  # fail open does not skip auth
    series = 'yatagarasu_authorization_decisions_total{authorizer="opa",bucket='
    assert running.metric(series + '"closed",decision="deny",result="error"}') == 2
    assert running.metric(series + '"open",decision="allow",result="error"}') == 1
    running.wait_for_log("gives no answer")
    log = running.log_text()
    assert log.count("authorization service opa gives no answer") == 2  # once per authorizer
    assert "fail mode closed: requests are refused" in log
    assert "fail mode open: requests are allowed" in log


def test_opa_too_slow_is_no_answer(setup: Setup) -> None:
    running, _, _, slow_opa = setup
    response = running.get("/slow/docs/a.txt", headers=token("alice"))
    assert response.status == 503
    assert len(slow_opa.calls) == 1


def test_openfga_checks_the_tuple_with_model_and_token(setup: Setup) -> None:
    running, _, fga, _ = setup
    allowed = running.get("/fga/doc.txt", headers=token("alice"))
    assert (allowed.status, allowed.body) == (200, b"body of doc.txt\n")
    (call,) = fga.calls
    assert call.path == f"/stores/{STORE}/check"
    assert call.headers["authorization"] == f"Bearer {FGA_TOKEN}"
    assert call.body == {
        "tuple_key": {"user": "user:alice", "relation": "viewer", "object": "file:fga/doc.txt"},
        "authorization_model_id": MODEL,
    }
    denied = running.get("/fga/doc.txt", headers=token("bob"))
    assert denied.status == 403
    assert denied.json()["message"] == "denied by openfga"
    assert running.get("/fga/docs/a.txt", headers=token("alice")).status == 403
    assert len(fga.calls) == 3
    assert FGA_TOKEN not in running.settled_log_text()


def test_an_openfga_error_answer_is_no_answer(setup: Setup) -> None:
    running, _, fga, _ = setup
    response = running.get("/fga_bad/doc.txt", headers=token("alice"))
    assert response.status == 503
    assert response.json()["message"] == "authorization service unavailable (openfga)"
    assert [c.path for c in fga.calls] == ["/stores/01NOSUCHSTORE0000000000000/check"]
    running.wait_for_log("authorization service openfga gives no answer (answered HTTP 404)")


def test_a_third_party_authorizer(setup: Setup) -> None:
    running, _, _, _ = setup
    assert running.get("/owned/alice/own.txt", headers=token("alice")).status == 200
    assert running.get("/owned/public/p.txt", headers=token("bob")).status == 200
    denied = running.get("/owned/alice/own.txt", headers=token("bob"))
    assert (denied.status, denied.json()["message"]) == (403, "bob may not read this key")
    series = 'yatagarasu_authorization_decisions_total{authorizer="owner_prefix",bucket="owned",'
    assert running.metric(series + 'decision="allow",result="allow"}') == 2


def test_check_names_the_bad_authorization_key(
    twistd_check: Callable[..., TwistdResult], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    bucket = bucket_config(
        moto_s3,
        "p",
        s3_bucket,
        authorization={"type": "opa", "opa_url": "http://127.0.0.1:1", "opa_policy_path": "a",
                       "opa_fail_mode": "maybe"},
    )  # fmt: skip
    result = twistd_check({"buckets": [bucket]})
    assert result.returncode == 1, result.output
    assert "buckets[0].authorization.opa_fail_mode: must be one of 'open', 'closed'" in (
        result.output
    )


def test_a_reload_applies_new_authorization_settings_and_refuses_bad_ones(setup: Setup) -> None:
    running, opa, _, _ = setup
    assert running.get("/opa/docs/a.txt", headers=token("alice")).status == 200

    def other_rule(document: dict[str, Any]) -> None:
        document["buckets"][0]["authorization"]["opa_policy_path"] = "yatagarasu/authz/other"

    rewrite(running, other_rule)
    sighup_and_wait(running)
    assert running.get("/opa/docs/a.txt", headers=token("alice")).status == 403  # undefined rule
    assert opa.calls[-1].path == "/v1/data/yatagarasu/authz/other"

    rewrite(running, lambda d: d["buckets"][0]["authorization"].update(opa_timeout_ms=0))
    sighup_and_wait(running)
    assert "buckets[0].authorization.opa_timeout_ms: must be > 0" in running.log_text()
    still = running.get("/opa/docs/a.txt", headers=token("alice"))
    assert still.status == 403  # generation 2 still serves
    assert running.metric("yatagarasu_config_generation") == 2.0
