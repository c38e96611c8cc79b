"""
The HTTP fetchers on a fake agent: what they send (STS's form with the token file read at
every fetch, the ECS token file likewise) and what they make of the answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from twisted.internet.defer import Deferred

from tests.unit.fakes import FakeAgent, FakeResponse
from yatagarasu.s3.credential_fetchers import ContainerCredentials, WebIdentity
from yatagarasu.s3.credentials import CredentialsFetchError, Fetched

STS_ANSWER = b"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials>
<AccessKeyId>ASIAWEB</AccessKeyId><SecretAccessKey>sweb</SecretAccessKey>
<SessionToken>tweb</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>
</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"""


class Body:
    """Collects what a body producer writes."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def run(fetch: Any, agent: FakeAgent, answer: FakeResponse) -> Deferred[Fetched]:
    d: Deferred[Fetched] = Deferred.fromCoroutine(fetch())
    agent.answer(answer)
    return d


def form(agent: FakeAgent) -> dict[str, list[str]]:
    body = Body()
    agent.sent[-1].body_producer.startProducing(body)
    return parse_qs(body.data.decode())


def test_web_identity_reads_the_token_file_at_every_fetch(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    agent = FakeAgent()
    fetch = WebIdentity(agent, "http://127.0.0.1:5000", "arn:aws:iam::1:role/r", "s", str(token))
    results = []
    run(fetch, agent, FakeResponse(200, {}, body=STS_ANSWER)).addCallback(results.append)
    sent = form(agent)
    assert agent.sent[-1].method == b"POST" and agent.sent[-1].uri == b"http://127.0.0.1:5000/"
    assert sent["Action"] == ["AssumeRoleWithWebIdentity"]
    assert sent["RoleArn"] == ["arn:aws:iam::1:role/r"] and sent["RoleSessionName"] == ["s"]
    assert sent["WebIdentityToken"] == ["first-token"]
    assert not agent.sent[-1].headers.hasHeader(b"authorization")  # not signed
    (fetched,) = results
    assert fetched.credentials.access_key == "ASIAWEB"
    assert fetched.credentials.session_token == "tweb"
    assert fetched.expires_at == 1893456000.0
    token.write_text("rotated-token")
    run(fetch, agent, FakeResponse(200, {}, body=STS_ANSWER))
    assert form(agent)["WebIdentityToken"] == ["rotated-token"]


def test_an_sts_error_is_reported_by_its_code(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    agent = FakeAgent()
    fetch = WebIdentity(agent, "http://127.0.0.1:5000", "arn", "s", str(token))
    error = b"<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>"
    failures: list[Any] = []
    run(fetch, agent, FakeResponse(400, {}, body=error)).addErrback(failures.append)
    assert failures[0].check(CredentialsFetchError)
    assert "HTTP 400 InvalidIdentityToken" in str(failures[0].value)


def test_ecs_sends_the_token_from_its_file_each_time(tmp_path: Path) -> None:
    token_file = tmp_path / "ecs"
    token_file.write_text("one\n")
    agent = FakeAgent()
    fetch = ContainerCredentials(agent, "http://127.0.0.1:9/creds", "fixed", str(token_file))
    answer = (
        b'{"AccessKeyId": "ASIAECS", "SecretAccessKey": "s", "Token": "t",'
        b' "Expiration": "2030-01-01T00:00:00Z"}'
    )
    results: list[Fetched] = []
    run(fetch, agent, FakeResponse(200, {}, body=answer)).addCallback(results.append)
    assert agent.sent[-1].headers.getRawHeaders(b"authorization") == [b"one"]
    token_file.write_text("two")
    run(fetch, agent, FakeResponse(200, {}, body=answer)).addCallback(results.append)
    assert agent.sent[-1].headers.getRawHeaders(b"authorization") == [b"two"]
    assert [r.credentials.access_key for r in results] == ["ASIAECS", "ASIAECS"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "the answer is not JSON"),
        (b'{"Code": "Failed"}', "Code 'Failed'"),
        (b'{"AccessKeyId": "A"}', "no AccessKeyId/SecretAccessKey"),
        (b'{"AccessKeyId": "A", "SecretAccessKey": "s", "Expiration": "soon"}', "not a date"),
    ],
)
def test_unusable_answers_are_failures(body: bytes, message: str) -> None:
    agent = FakeAgent()
    fetch = ContainerCredentials(agent, "http://127.0.0.1:9/creds", None, None)
    failures: list[Any] = []
    run(fetch, agent, FakeResponse(200, {}, body=body)).addErrback(failures.append)
    assert message in str(failures[0].value)
    assert not agent.sent[-1].headers.hasHeader(b"authorization")
