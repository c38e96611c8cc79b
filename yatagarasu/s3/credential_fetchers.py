"""
Fetching temporary credentials over HTTP, on an injected ``IAgent``: the EC2 instance metadata
service (IMDSv2), the ECS container endpoint and STS ``AssumeRoleWithWebIdentity``. Each
fetcher is called once per fetch by :class:`yatagarasu.s3.credentials.RefreshingCredentials`
(which bounds it in time); errors are :class:`CredentialsFetchError` whose messages hold no
secret (status codes, error codes, which step failed).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import error as neterror
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from yatagarasu import __version__
from yatagarasu.http.outgoing import BytesBody
from yatagarasu.s3.credentials import CredentialsFetchError, Fetched
from yatagarasu.s3.errors import BoundedCollector
from yatagarasu.s3.sigv4 import Credentials

_USER_AGENT = f"yatagarasu/{__version__}".encode()
#: IMDSv2 session tokens asked for (seconds; the AWS SDKs ask for 6 hours)
IMDS_TOKEN_TTL_SECONDS = 21600
_IMDS_ROLES = "/latest/meta-data/iam/security-credentials/"
_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


async def _call(
    agent: IAgent, method: bytes, url: str, headers: Mapping[bytes, bytes], body: bytes = b""
) -> tuple[int, bytes]:
    send = Headers({b"user-agent": [_USER_AGENT]})
    for name, value in headers.items():
        send.setRawHeaders(name, [value])
    producer = BytesBody(body) if body else None
    try:
        response = await agent.request(method, url.encode("ascii"), send, producer)
    except (neterror.ConnectError, neterror.DNSLookupError, OSError) as e:
        raise CredentialsFetchError(f"cannot connect to {url} ({e.__class__.__name__})") from None
    except (ResponseNeverReceived, ResponseFailed):
        raise CredentialsFetchError(f"{url} closed the connection") from None
    collector = BoundedCollector()
    response.deliverBody(collector)
    return response.code, await collector.done


def _expiry(value: Any, where: str) -> float:
    if not isinstance(value, str):
        raise CredentialsFetchError(f"{where}: no Expiration")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialsFetchError(f"{where}: Expiration is not a date") from None


def _from_json(body: bytes, where: str) -> Fetched:
    try:
        document = json.loads(body)
    except ValueError:
        raise CredentialsFetchError(f"{where}: the answer is not JSON") from None
    if not isinstance(document, dict):
        raise CredentialsFetchError(f"{where}: the answer is not a JSON object")
    code = document.get("Code", "Success")
    if code != "Success":
        raise CredentialsFetchError(f"{where}: Code {str(code)[:80]!r}")
    access, secret = document.get("AccessKeyId"), document.get("SecretAccessKey")
    if not isinstance(access, str) or not isinstance(secret, str) or not access or not secret:
        raise CredentialsFetchError(f"{where}: no AccessKeyId/SecretAccessKey")
    token = document.get("Token")
    expires = document.get("Expiration")
    return Fetched(
        Credentials(access, secret, token if isinstance(token, str) and token else None),
        None if expires is None else _expiry(expires, where),
    )


class InstanceMetadata:
    """
    An EC2 instance role's credentials from IMDSv2: a session token (``PUT
    /latest/api/token``), the role's name, then its credentials.

    :param agent: the HTTP agent.
    :param endpoint: the metadata service, ``http://169.254.169.254`` on EC2.
    """

    def __init__(self, agent: IAgent, endpoint: str) -> None:
        self._agent = agent
        self.endpoint = endpoint.rstrip("/")

    async def __call__(self) -> Fetched:
        code, token = await _call(
            self._agent,
            b"PUT",
            self.endpoint + "/latest/api/token",
            {b"x-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_SECONDS).encode()},
        )
        if code != 200 or not token:
            raise CredentialsFetchError(f"instance metadata token: HTTP {code}")
        headers = {b"x-aws-ec2-metadata-token": token.strip()}
        code, roles = await _call(self._agent, b"GET", self.endpoint + _IMDS_ROLES, headers)
        role = roles.decode("utf-8", "replace").strip().splitlines()[:1]
        if code != 200 or not role or not role[0].strip():
            raise CredentialsFetchError(f"instance metadata role: HTTP {code}, no role")
        name = role[0].strip()
        code, body = await _call(self._agent, b"GET", self.endpoint + _IMDS_ROLES + name, headers)
        if code != 200:
            raise CredentialsFetchError(f"instance metadata credentials of {name}: HTTP {code}")
        return _from_json(body, f"instance metadata credentials of {name}")


class ContainerCredentials:
    """
    An ECS task role's credentials (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` or
    ``_RELATIVE_URI``), with its authorization token when one is given (the token file is
    read at every fetch: the agent rotates it).

    :param agent: the HTTP agent.
    :param url: the credentials URL.
    :param token: a fixed ``Authorization`` value, or ``None``.
    :param token_file: a file holding it, read each time (wins over ``token``).
    """

    def __init__(self, agent: IAgent, url: str, token: str | None, token_file: str | None) -> None:
        self._agent = agent
        self.url = url
        self._token = token
        self._token_file = token_file

    async def __call__(self) -> Fetched:
        token = self._token
        if self._token_file is not None:
            token = _read_file(self._token_file, "the container authorization token file")
        headers = {b"authorization": token.strip().encode()} if token else {}
        code, body = await _call(self._agent, b"GET", self.url, headers)
        if code != 200:
            raise CredentialsFetchError(f"container credentials: HTTP {code}")
        return _from_json(body, "container credentials")


class WebIdentity:
    """
    A role's credentials from STS ``AssumeRoleWithWebIdentity`` (EKS IRSA): the token file is
    read at every fetch (the cluster rotates it); the request is not signed.

    :param agent: the HTTP agent.
    :param sts_endpoint: STS, ``https://sts.<region>.amazonaws.com`` by default.
    :param role_arn: the role to assume.
    :param session_name: the role session's name.
    :param token_file: the web identity token's file.
    """

    def __init__(
        self, agent: IAgent, sts_endpoint: str, role_arn: str, session_name: str, token_file: str
    ) -> None:
        self._agent = agent
        self.sts_endpoint = sts_endpoint.rstrip("/") + "/"
        self.role_arn = role_arn
        self._session_name = session_name
        self._token_file = token_file

    async def __call__(self) -> Fetched:
        token = _read_file(self._token_file, "the web identity token file").strip()
        form = urlencode(
            {
                "Action": "AssumeRoleWithWebIdentity",
                "Version": "2011-06-15",
                "RoleArn": self.role_arn,
                "RoleSessionName": self._session_name,
                "WebIdentityToken": token,
            }
        ).encode()
        code, body = await _call(
            self._agent,
            b"POST",
            self.sts_endpoint,
            {b"content-type": b"application/x-www-form-urlencoded"},
            form,
        )
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise CredentialsFetchError(f"STS: HTTP {code}, the answer is not XML") from None
        if code != 200:
            error = root.findtext(f".//{_STS_NS}Code") or root.findtext(".//Code") or ""
            raise CredentialsFetchError(f"STS AssumeRoleWithWebIdentity: HTTP {code} {error[:80]}")
        found = root.find(f".//{_STS_NS}Credentials")
        if found is None:
            raise CredentialsFetchError("STS AssumeRoleWithWebIdentity: no Credentials")

        def text(name: str) -> str:
            return (found.findtext(_STS_NS + name) or "").strip()

        if not text("AccessKeyId") or not text("SecretAccessKey"):
            raise CredentialsFetchError("STS AssumeRoleWithWebIdentity: no AccessKeyId")
        return Fetched(
            Credentials(text("AccessKeyId"), text("SecretAccessKey"), text("SessionToken") or None),
            _expiry(text("Expiration"), "STS AssumeRoleWithWebIdentity"),
        )


def _read_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise CredentialsFetchError(f"cannot read {what} {path} ({e.strerror})") from None
