"""Local demo (``make demo``, ``python -m yatagarasu.demo``) and process helpers for tests.

The demo starts a moto S3 server on 127.0.0.1 with SigV4 checking switched on, seeds two buckets,
writes a proxy config to ``.demo/yatagarasu.yaml``, runs the real proxy
(``twistd -n yatagarasu``) on 127.0.0.1:8080, prints curl lines to try, and streams the
proxy's log until Ctrl-C or SIGTERM.

The same building blocks (:class:`MotoS3Server`, :func:`start_proxy`, :func:`proxy_config`,
:func:`run_twistd`, :func:`http_request`) are what the integration test fixtures in
``tests/conftest.py`` use, so the moto/IAM bootstrap exists exactly once.

This module needs the ``dev`` extra (moto, boto3); the proxy itself never imports it. Every wait
in here is bounded in time and in number of tries, and only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import random
import secrets
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jwt
import yaml

LOOPBACK = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
DEMO_PROXY_PORT = 8080
DEMO_MOTO_PORT = 5000

#: IAM user the moto bootstrap creates; its key is what the proxy signs with.
MOTO_USER = "yatagarasu"


# --------------------------------------------------------------------------------------------
# Small, bounded helpers
# --------------------------------------------------------------------------------------------


class StartupError(RuntimeError):
    """A helper process (moto, proxy, twistd) did not come up as expected."""


def free_port(host: str = LOOPBACK) -> int:
    """
    Ask the kernel for a currently unused TCP port on ``host``.

    :param host: address to probe (loopback only in this project).
    :returns: a port number that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """
    Tell whether ``host:port`` can be bound right now.

    :param port: TCP port.
    :param host: address.
    :returns: ``True`` when nothing listens there.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """
    Poll ``predicate`` until it returns true, bounded in time **and** in number of tries.

    :param predicate: called repeatedly; exceptions count as "not yet", except
        :class:`StartupError`, which ends the wait at once (e.g. "the process exited").
    :param timeout: give up after this many seconds.
    :param interval: pause between tries.
    :param what: description used in the error message.
    :raises TimeoutError: when the predicate never became true.
    """
    deadline = time.monotonic() + timeout
    max_tries = math.ceil(timeout / interval) + 1
    last_error: BaseException | None = None
    for _ in range(max_tries):
        try:
            if predicate():
                return
        except StartupError:
            raise
        except Exception as exc:  # the thing may simply not be up yet
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error is not None else ""
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")


def _die_with_parent() -> None:
    """``preexec_fn`` for children: on Linux, get SIGTERM when the parent goes away."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except Exception:  # best effort only (non-Linux, no libc symbol)
        pass


@dataclass(frozen=True)
class HttpResponse:
    """A fully read HTTP response (for tests and the demo; not for large bodies)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """
        :param name: header name, any case.
        :returns: the first value of that header, or ``None``.
        """
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """
        :param name: header name, any case.
        :returns: every value of that header, in order.
        """
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def json(self) -> Any:
        """:returns: the body decoded as JSON."""
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """
    Send one HTTP/1.1 request and read the whole response.

    The path is sent exactly as given (no normalisation, no re-quoting), so tests can send
    ``%2e%2e`` and friends. ``http.client`` is used rather than urllib so that no proxy
    environment variable, redirect handling or error raising gets in the way.

    :param method: HTTP method.
    :param url: ``http://host:port/path?query``.
    :param headers: request headers (mapping or list of pairs, for repeated headers).
    :param body: request body.
    :param timeout: socket timeout in seconds.
    :returns: the response.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http://host:port/... URLs are supported, got {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        for key, value in pairs:
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, resp.reason, list(resp.getheaders()), data)
    finally:
        conn.close()


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send ``sig``, wait up to ``timeout``, then SIGKILL; always reaps. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return proc.wait(timeout=30)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


# --------------------------------------------------------------------------------------------
# moto S3 with SigV4 checking on
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request that reached moto (recorded *before* moto checks its signature)."""

    method: str
    raw_url: str
    path: str  # percent-decoded path, e.g. "/bucket/docs/read me.txt"
    query: str
    headers: dict[str, str]

    @property
    def signed(self) -> bool:
        """:returns: whether the request carried an ``Authorization`` header."""
        return any(k.lower() == "authorization" for k in self.headers)


class MotoS3Server:
    """
    A real moto server in a subprocess, with an IAM user and SigV4 checking switched on.

    Bootstrap: start moto (auth is off by default), create IAM user :data:`MOTO_USER`, a policy
    allowing ``s3:*`` on ``*``, attach it, create an access key, then
    ``POST /moto-api/reset-auth`` with body ``0`` (``INITIAL_NO_AUTH_ACTION_COUNT = 0``): from then
    on every request must be SigV4-signed by a known key (unsigned → 403
    ``AccessDenied``-ish empty body, wrong signature → 403 ``SignatureDoesNotMatch``).

    With ``record_requests=True`` moto's request recorder writes every incoming request to a
    JSON-lines file, which :meth:`requests` / :meth:`count_requests` read (used to check request
    coalescing).

    :param workdir: directory for moto's log and request recording.
    :param port: port to bind, or ``None`` for a free one.
    :param region: region used for the boto3 clients.
    :param record_requests: enable moto's request recorder.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        region: str = DEFAULT_REGION,
        record_requests: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = LOOPBACK
        self.region = region
        self.record_requests = record_requests
        self._wanted_port = port
        self.port = 0
        self.access_key = ""
        self.secret_key = ""
        self.log_path = self.workdir / "moto.log"
        self.recording_path = self.workdir / "moto-requests.jsonl"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._s3: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """:returns: ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """:returns: the moto process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> MotoS3Server:
        """
        Start moto, bootstrap IAM, switch SigV4 checking on and verify it.

        :param timeout: seconds to wait for moto to answer (per attempt).
        :returns: ``self``.
        :raises StartupError: when moto does not start or auth does not behave.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._wanted_port is not None else 3
        for attempt in range(attempts):
            port = self._wanted_port if self._wanted_port is not None else free_port()
            if self._spawn(port, timeout):
                break
            if attempt == attempts - 1:
                raise StartupError(
                    f"moto server did not start on {self.host}:{port}; log tail:\n"
                    + _tail(self.log_path)
                )
        try:
            self._bootstrap_iam()
            self.set_auth(True)
            self.verify_signature_checking()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, port: int, timeout: float) -> bool:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith(("AWS_", "MOTO_")) or name in ("TEST_SERVER_MODE",):
                del env[name]
        if self.record_requests:
            env["MOTO_ENABLE_RECORDING"] = "true"
            env["MOTO_RECORDER_FILEPATH"] = str(self.recording_path)
            self.recording_path.write_bytes(b"")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )
        self.port = port
        proc = self._proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise StartupError(f"moto exited with code {proc.returncode}")
            http_request("GET", f"{self.endpoint_url}/moto-api/", timeout=2.0)
            return True

        try:
            wait_until(answers, timeout=timeout, interval=0.1, what="moto to answer")
        except (TimeoutError, StartupError):
            self.stop()
            return False
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """
        Stop moto (SIGTERM, then SIGKILL after ``timeout``) and close its log.

        :param timeout: grace period in seconds.
        :returns: moto's exit code, or ``None`` if it was not running.
        """
        code: int | None = None
        if self._proc is not None:
            code = _terminate(self._proc, signal.SIGTERM, timeout)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- auth -------------------------------------------------------------------------------

    def _boto3_client(self, service: str, access_key: str, secret_key: str) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def _bootstrap_iam(self) -> None:
        # Auth is still off: any credentials are accepted for these calls.
        iam = self._boto3_client("iam", "bootstrap", "bootstrap")
        self.access_key, self.secret_key = self._create_user(iam, MOTO_USER, ["s3:*"])

    @staticmethod
    def _create_user(iam: Any, user: str, actions: Sequence[str]) -> tuple[str, str]:
        iam.create_user(UserName=user)
        if actions:
            document = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
            }
            policy = iam.create_policy(
                PolicyName=f"{user}-policy", PolicyDocument=json.dumps(document)
            )
            iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def set_auth(self, enabled: bool) -> None:
        """
        Switch moto's request authentication on or off (``POST /moto-api/reset-auth``).

        :param enabled: ``True`` → every request must be signed by a known key.
        :raises StartupError: when moto refuses.
        """
        body = b"0" if enabled else b"inf"
        # text/plain: with the default form content type werkzeug swallows the body.
        resp = http_request(
            "POST",
            f"{self.endpoint_url}/moto-api/reset-auth",
            headers={"Content-Type": "text/plain"},
            body=body,
        )
        if resp.status != 200:
            raise StartupError(f"moto reset-auth answered {resp.status}: {resp.body[:200]!r}")

    def create_credentials(self, user: str, actions: Sequence[str] = ()) -> tuple[str, str]:
        """
        Create another IAM user with a key, allowed only ``actions`` (e.g. none → every S3 call
        is ``AccessDenied``). Auth is switched off for the duration and back on afterwards.

        :param user: unique IAM user name.
        :param actions: IAM actions to allow on ``*``.
        :returns: ``(access_key, secret_key)``.
        """
        self.set_auth(False)
        try:
            iam = self._boto3_client("iam", "bootstrap", "bootstrap")
            return self._create_user(iam, user, actions)
        finally:
            self.set_auth(True)

    #: bucket/key that :meth:`verify_signature_checking` creates for its unsigned probe
    PROBE_BUCKET = "yatagarasu-auth-probe"
    PROBE_KEY = "probe.txt"

    @property
    def probe_url(self) -> str:
        """:returns: URL of an existing object, for unsigned-request checks."""
        return f"{self.endpoint_url}/{self.PROBE_BUCKET}/{self.PROBE_KEY}"

    def verify_signature_checking(self) -> None:
        """
        Check that moto really enforces SigV4: signed calls work, an unsigned GET of an existing
        object gets 403, and a request signed with a wrong secret gets 403.

        (moto 5.2.5 answers unsigned requests for *missing* buckets/keys and for ``GET /`` with
        a 500 — a ``KeyError: 'HTTP_AUTHORIZATION'`` inside moto — so the probe uses an object
        that exists.)

        :raises StartupError: when any check fails.
        """
        try:
            existing = {b["Name"] for b in self.s3.list_buckets().get("Buckets", [])}
            if self.PROBE_BUCKET not in existing:
                self.s3.create_bucket(Bucket=self.PROBE_BUCKET)
            self.s3.put_object(Bucket=self.PROBE_BUCKET, Key=self.PROBE_KEY, Body=b"probe")
        except Exception as exc:
            raise StartupError(f"signed S3 calls to moto failed: {exc!r}") from exc
        unsigned = http_request("GET", self.probe_url, timeout=10.0)
        if unsigned.status != 403:
            raise StartupError(
                f"moto answered an unsigned GET with {unsigned.status}, expected 403: "
                "signature checking is not on"
            )
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        wrong = self.client("s3", secret_key=self.secret_key + "x")
        try:
            wrong.get_object(Bucket=self.PROBE_BUCKET, Key=self.PROBE_KEY)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 403:
                raise StartupError(f"a wrongly signed GET got {status}, expected 403") from exc
        else:
            raise StartupError("moto accepted a request signed with a wrong secret")

    # -- S3 helpers -------------------------------------------------------------------------

    @property
    def s3(self) -> Any:
        """:returns: a boto3 S3 client signed with the bootstrap user's key (path style)."""
        if self._s3 is None:
            self._s3 = self.client("s3")
        return self._s3

    def client(
        self, service: str = "s3", access_key: str | None = None, secret_key: str | None = None
    ) -> Any:
        """
        :param service: boto3 service name.
        :param access_key: defaults to the bootstrap user's key.
        :param secret_key: defaults to the bootstrap user's secret.
        :returns: a new signed boto3 client for this moto server.
        """
        return self._boto3_client(
            service,
            access_key if access_key is not None else self.access_key,
            secret_key if secret_key is not None else self.secret_key,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """
        :param name: bucket name, or ``None`` for a unique ``test-<hex>`` name.
        :returns: the bucket name.
        """
        bucket = name or f"test-{uuid.uuid4().hex[:16]}"
        self.s3.create_bucket(Bucket=bucket)
        return bucket

    def put_object(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        content_type: str | None = None,
        **extra: Any,
    ) -> str:
        """
        Store an object (single PUT).

        :param bucket: bucket name.
        :param key: object key (any characters).
        :param body: object bytes.
        :param content_type: ``Content-Type`` to store.
        :param extra: further ``put_object`` arguments (``CacheControl``, ``ContentEncoding``,
            ``ContentDisposition``, ``Metadata``, …).
        :returns: the ETag exactly as S3 reports it (with quotes).
        """
        args: dict[str, Any] = dict(extra)
        if content_type is not None:
            args["ContentType"] = content_type
        resp = self.s3.put_object(Bucket=bucket, Key=key, Body=body, **args)
        return str(resp["ETag"])

    def delete_object(self, bucket: str, key: str) -> None:
        """
        :param bucket: bucket name.
        :param key: object key.
        """
        self.s3.delete_object(Bucket=bucket, Key=key)

    def get_object(self, bucket: str, key: str) -> bytes:
        """
        :param bucket: bucket name.
        :param key: object key.
        :returns: the object's bytes (signed GET straight to moto).
        """
        body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    # -- request recording ------------------------------------------------------------------

    def requests(
        self, method: str | None = None, bucket: str | None = None, key: str | None = None
    ) -> list[RecordedRequest]:
        """
        Requests moto received since start or the last :meth:`clear_requests`.

        Moto records a request before checking its signature, so rejected ones are included;
        use :attr:`RecordedRequest.signed` to tell them apart.

        :param method: keep only this method (``"GET"``, ``"HEAD"``…).
        :param bucket: keep only requests for this bucket (path style).
        :param key: with ``bucket``, keep only requests for exactly this object key.
        :returns: the matching requests, oldest first.
        :raises RuntimeError: when recording was not enabled.
        """
        if not self.record_requests:
            raise RuntimeError("MotoS3Server(record_requests=True) is needed to count requests")
        try:
            text = self.recording_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        result = []
        for entry in _json_stream(text):
            raw_url = str(entry.get("url", ""))
            parts = urllib.parse.urlsplit(raw_url)
            req = RecordedRequest(
                method=str(entry.get("method", "")),
                raw_url=raw_url,
                path=urllib.parse.unquote(parts.path),
                query=parts.query,
                headers={str(k): str(v) for k, v in dict(entry.get("headers") or {}).items()},
            )
            if req.path.startswith("/moto-api/"):
                continue
            if method is not None and req.method != method.upper():
                continue
            if bucket is not None:
                wanted = f"/{bucket}" if key is None else f"/{bucket}/{key}"
                if key is None:
                    if req.path != wanted and not req.path.startswith(wanted + "/"):
                        continue
                elif req.path != wanted:
                    continue
            result.append(req)
        return result

    def count_requests(
        self, method: str = "GET", bucket: str | None = None, key: str | None = None
    ) -> int:
        """
        :param method: HTTP method to count.
        :param bucket: bucket name (path style).
        :param key: object key.
        :returns: how many such requests reached moto.
        """
        return len(self.requests(method, bucket, key))

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        resp = http_request("POST", f"{self.endpoint_url}/moto-api/recorder/reset-recording")
        if resp.status != 200:
            raise RuntimeError(f"moto reset-recording answered {resp.status}")


def _json_stream(text: str) -> Iterator[dict[str, Any]]:
    """Decode concatenated JSON objects (moto writes one per line, but threads may interleave
    the trailing newlines); undecodable garbage is skipped up to the next ``{``."""
    decoder = json.JSONDecoder()
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            nxt = text.find("{", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        if isinstance(obj, dict):
            yield obj


# --------------------------------------------------------------------------------------------
# Proxy config and processes
# --------------------------------------------------------------------------------------------


def bucket_config(
    moto: MotoS3Server,
    name: str,
    bucket: str,
    *,
    path_prefix: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """
    One ``buckets[]`` entry pointing at ``moto``.

    :param moto: the S3 server.
    :param name: bucket name used in URLs/logs/metrics.
    :param bucket: the S3 bucket name.
    :param path_prefix: URL prefix, default ``/<name>``.
    :param extra: further bucket keys (``auth``, ``cache``, ``cors``…), merged in.
    :returns: the entry as a dict.
    """
    entry: dict[str, Any] = {
        "name": name,
        "path_prefix": path_prefix if path_prefix is not None else f"/{name}",
        "s3": {
            "bucket": bucket,
            "region": moto.region,
            "endpoint": moto.endpoint_url,
            "access_key": moto.access_key,
            "secret_key": moto.secret_key,
        },
    }
    entry.update(extra)
    return entry


def proxy_config(
    moto: MotoS3Server,
    buckets: Mapping[str, str] | Sequence[Mapping[str, Any]],
    *,
    port: int = 0,
    address: str = LOOPBACK,
    **top_level: Any,
) -> dict[str, Any]:
    """
    A proxy config dict pointing at ``moto``.

    :param moto: the S3 server.
    :param buckets: either ``{name: s3_bucket}`` (prefix ``/<name>``) or ready ``buckets[]``
        entries (see :func:`bucket_config`).
    :param port: listening port; ``0`` lets :func:`start_proxy` pick a free one.
    :param address: listening address.
    :param top_level: further top-level keys (``cache``, ``jwt``, ``audit_log``…).
    :returns: the config dict (dump it with :func:`write_config`).
    """
    if isinstance(buckets, Mapping):
        entries = [bucket_config(moto, name, bucket) for name, bucket in buckets.items()]
    else:
        entries = [dict(entry) for entry in buckets]
    config: dict[str, Any] = {
        "server": {"address": address, "port": port},
        "buckets": entries,
    }
    config.update(top_level)
    return config


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """
    :param config: config dict.
    :param path: YAML file to write.
    :returns: ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False))
    return path


#: ``python -m twisted`` is the newer ``twist`` runner (no ``-n``, no ``--pidfile``), so twistd
#: is started through its entry function with this interpreter.
_TWISTD_BOOT = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistd_command(*args: str) -> list[str]:
    """
    :param args: twistd arguments, e.g. ``("-n", "yatagarasu", "--config", path)``.
    :returns: the argv running ``twistd <args>`` with this interpreter.
    """
    return [sys.executable, "-c", _TWISTD_BOOT, *args]


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(os.environ)
    result["PYTHONUNBUFFERED"] = "1"
    if env:
        result.update(env)
    return result


@dataclass
class ProxyProcess:
    """A running ``twistd -n yatagarasu`` process (see :func:`start_proxy`)."""

    port: int
    address: str
    config_path: Path
    log_path: Path
    workdir: Path
    proc: subprocess.Popen[bytes]
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """:returns: ``http://127.0.0.1:<port>`` (``http://[::1]:<port>`` for IPv6)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int:
        """:returns: the twistd process id."""
        return self.proc.pid

    def url(self, path: str) -> str:
        """
        :param path: request target starting with ``/`` (sent as is).
        :returns: the absolute URL.
        """
        return self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        """
        :param method: HTTP method.
        :param path: request target (sent exactly as given).
        :param headers: request headers.
        :param body: request body.
        :param timeout: socket timeout.
        :returns: the full response.
        """
        return http_request(method, self.url(path), headers=headers, body=body, timeout=timeout)

    def get(self, path: str, **kwargs: Any) -> HttpResponse:
        """:returns: ``request("GET", path, ...)``."""
        return self.request("GET", path, **kwargs)

    def log_text(self) -> str:
        """:returns: everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> None:
        """
        Wait until ``needle`` appears in the log.

        :param needle: substring to find.
        :param timeout: seconds.
        :raises TimeoutError: when it never appears.
        """
        wait_until(lambda: needle in self.log_text(), timeout=timeout, what=f"log {needle!r}")

    def is_running(self) -> bool:
        """:returns: whether the process is still alive."""
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """
        :param sig: signal to deliver (e.g. ``signal.SIGHUP`` for a reload).
        """
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """
        :param timeout: seconds.
        :returns: the exit code once the process has exited.
        :raises subprocess.TimeoutExpired: when it is still running.
        """
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Send ``sig`` and wait for the exit; SIGKILL after ``timeout``.

        :param sig: signal to send first.
        :param timeout: grace period in seconds.
        :returns: the exit code (negative = killed by that signal, as in ``subprocess``;
            twistd re-raises SIGTERM, so a clean SIGTERM shutdown may be ``-15``).
        """
        try:
            return _terminate(self.proc, sig, timeout)
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL the process (no-op when it has exited) and reap it."""
        _terminate(self.proc, signal.SIGKILL, 10.0)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def start_proxy(
    config: Mapping[str, Any] | Path,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> ProxyProcess:
    """
    Run ``twistd -n yatagarasu --config <file>`` and wait until ``GET /health`` is 200.

    twistd runs with ``workdir`` as its current directory, so its ``twistd.pid`` stays there and
    several proxies can run at once.

    :param config: config dict (written to ``workdir/yatagarasu.yaml``; ``server.port`` 0 or
        missing is replaced by a free port) or the path of an existing YAML file.
    :param workdir: directory for the config, the log (``proxy.log``) and the pid file.
    :param env: extra environment variables.
    :param timeout: seconds to wait for ``/health``.
    :param extra_args: further twistd plugin arguments.
    :returns: the running proxy.
    :raises StartupError: when it exits early or ``/health`` never answers 200 (it is killed).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, Path):
        config_path = config
        loaded = yaml.safe_load(config_path.read_text()) or {}
        server = dict(loaded.get("server") or {})
    else:
        data = dict(config)
        server = dict(data.get("server") or {})
        if not server.get("port"):
            server["port"] = free_port()
        server.setdefault("address", LOOPBACK)
        data["server"] = server
        config_path = write_config(data, workdir / "yatagarasu.yaml")
    port = int(server.get("port") or 8080)
    address = str(server.get("address") or LOOPBACK)
    if address in ("0.0.0.0", ""):
        address = LOOPBACK
    elif address == "::":
        address = "::1"
    log_path = workdir / "proxy.log"
    argv = twistd_command("-n", "yatagarasu", "--config", str(config_path), *extra_args)
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the ProxyProcess
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=_child_env(env),
        preexec_fn=_die_with_parent,
    )
    proxy = ProxyProcess(port, address, config_path, log_path, workdir, proc, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise StartupError(f"exited with code {proc.returncode}")
        return proxy.get("/health", timeout=2.0).status == 200

    try:
        wait_until(healthy, timeout=timeout, interval=0.1, what="the proxy's /health")
    except (TimeoutError, StartupError) as exc:
        proxy.kill()
        raise StartupError(
            f"proxy did not become healthy on {proxy.base_url}: {exc}\n"
            f"command: {shlex.join(argv)}\nlog tail:\n{_tail(log_path)}"
        ) from exc
    return proxy


@dataclass(frozen=True)
class TwistdResult:
    """Outcome of :func:`run_twistd`."""

    returncode: int | None  # None: still running at the deadline (then killed)
    output: str  # stdout and stderr, interleaved
    timed_out: bool
    daemonized_pid: int | None  # a daemon left behind (then killed), found via twistd.pid


def run_twistd(
    args: Sequence[str],
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> TwistdResult:
    """
    Run ``twistd <args>`` to completion, bounded in time.

    Meant for ``yatagarasu --check --config X`` and for configs that must be rejected before
    the proxy listens. If the process is still running at ``timeout`` it is killed and
    ``timed_out`` is set; if it daemonized (a live pid in ``workdir/twistd.pid``), that daemon
    is killed and reported in ``daemonized_pid``.

    :param args: twistd arguments.
    :param workdir: current directory for twistd (pid file, relative paths).
    :param env: extra environment variables.
    :param timeout: seconds.
    :returns: the result.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        twistd_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=_child_env(env),
        preexec_fn=_die_with_parent,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    daemon: int | None = None
    pidfile = workdir / "twistd.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if pid != proc.pid:
            os.kill(pid, 0)
            daemon = pid
            os.kill(pid, signal.SIGKILL)
    return TwistdResult(
        returncode=None if timed_out else proc.returncode,
        output=out.decode(errors="replace"),
        timed_out=timed_out,
        daemonized_pid=daemon,
    )


def check_config(
    config: Mapping[str, Any] | Path,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> TwistdResult:
    """
    ``twistd yatagarasu --check --config X``.

    :param config: config dict (written to ``workdir/check.yaml``) or a YAML path.
    :param workdir: twistd's current directory.
    :param env: extra environment variables.
    :param timeout: seconds.
    :returns: the result.
    """
    path = config if isinstance(config, Path) else write_config(config, workdir / "check.yaml")
    return run_twistd(
        ["yatagarasu", "--check", "--config", str(path)], workdir, env=env, timeout=timeout
    )


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------

PUBLIC_BUCKET = "yatagarasu-demo-public"
PRIVATE_BUCKET = "yatagarasu-demo-private"
LARGE_OBJECT_SIZE = 5 * 1024 * 1024


def demo_png(width: int = 32, height: int = 32) -> bytes:
    """
    :param width: pixels.
    :param height: pixels.
    :returns: a small, valid RGB PNG (a gradient).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 8 % 256, y * 8 % 256, 160))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class SeededObject:
    """An object the demo put into moto."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str


def seed_demo_objects(moto: MotoS3Server) -> list[SeededObject]:
    """
    Create the two demo buckets and their objects.

    :param moto: the S3 server.
    :returns: what was stored.
    """
    rng = random.Random(20261125)
    large = rng.randbytes(LARGE_OBJECT_SIZE)
    objects: list[tuple[str, str, bytes, str, dict[str, Any]]] = [
        (
            PUBLIC_BUCKET,
            "hello.txt",
            b"Hello from Yatagarasu, the three-legged crow!\n",
            "text/plain; charset=utf-8",
            {"CacheControl": "public, max-age=60"},
        ),
        (
            PUBLIC_BUCKET,
            "data/sample.json",
            json.dumps({"name": "yatagarasu", "legs": 3, "tags": ["s3", "proxy"]}).encode(),
            "application/json",
            {},
        ),
        (PUBLIC_BUCKET, "images/crow.png", demo_png(), "image/png", {}),
        (
            PUBLIC_BUCKET,
            "docs/read me.txt",
            b"A key with a space in it.\n",
            "text/plain; charset=utf-8",
            {},
        ),
        (
            PUBLIC_BUCKET,
            "large/5mib.bin",
            large,
            "application/octet-stream",
            {"ContentDisposition": 'attachment; filename="5mib.bin"'},
        ),
        (
            PRIVATE_BUCKET,
            "secret.txt",
            b"Only for authenticated readers.\n",
            "text/plain; charset=utf-8",
            {},
        ),
        (
            PRIVATE_BUCKET,
            "reports/2026.json",
            json.dumps({"year": 2026, "revenue": 42}).encode(),
            "application/json",
            {},
        ),
    ]
    for bucket in (PUBLIC_BUCKET, PRIVATE_BUCKET):
        moto.create_bucket(bucket)
    seeded = []
    for bucket, key, body, ctype, extra in objects:
        etag = moto.put_object(bucket, key, body, content_type=ctype, **extra)
        expected = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        if etag != expected:  # moto is expected to return the plain MD5 for single PUTs
            print(f"note: ETag of {bucket}/{key} is {etag}, not the MD5 {expected}")
        seeded.append(SeededObject(bucket, key, len(body), etag, ctype))
    return seeded


def demo_config(
    moto: MotoS3Server, *, jwt_secret: str, port: int = DEMO_PROXY_PORT
) -> dict[str, Any]:
    """
    The demo proxy config: ``/public`` → :data:`PUBLIC_BUCKET` (no auth), ``/private`` →
    :data:`PRIVATE_BUCKET` (JWT, HS256 with ``jwt_secret``), both cached in memory. This is
    the one place to extend the demo.

    :param moto: the S3 server.
    :param jwt_secret: the HS256 secret tokens for ``/private`` are signed with.
    :param port: proxy port.
    :returns: the config dict.
    """
    return proxy_config(
        moto,
        [
            bucket_config(moto, "public", PUBLIC_BUCKET),
            bucket_config(moto, "private", PRIVATE_BUCKET, auth={"enabled": True}),
        ],
        port=port,
        cache={
            "enabled": True,
            "cache_layers": ["memory"],
            "memory": {"max_cache_size_mb": 256, "max_item_size_mb": 10},
        },
        jwt={
            "secret": jwt_secret,
            "algorithm": "HS256",
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
    )


def demo_token(jwt_secret: str, *, hours: int = 24, **claims: Any) -> str:
    """
    :param jwt_secret: the demo's HS256 secret.
    :param hours: validity.
    :param claims: extra claims (``role="admin"`` for the admin API).
    :returns: a signed token for ``/private`` (subject ``demo-user``).
    """
    payload = {"sub": "demo-user", "exp": int(time.time()) + hours * 3600, **claims}
    return jwt.encode(payload, jwt_secret, algorithm="HS256")


def curl_lines(base_url: str, seeded: Sequence[SeededObject], token: str) -> list[str]:
    """
    :param base_url: the proxy's URL.
    :param seeded: what :func:`seed_demo_objects` stored.
    :param token: a valid token for ``/private``.
    :returns: ready-to-paste shell commands.
    """
    hello = next(o for o in seeded if o.key == "hello.txt")
    q = shlex.quote
    png_fmt = q("%{http_code} %{content_type} %{size_download}\\n")
    size_fmt = q("%{http_code} %{size_download} bytes\\n")
    return [
        f"curl -i {base_url}/public/hello.txt",
        f"curl -I {base_url}/public/hello.txt",
        f"curl -i -H {q('Range: bytes=0-4')} {base_url}/public/hello.txt",
        f"curl -i -H {q('If-None-Match: ' + hello.etag)} {base_url}/public/hello.txt",
        f"curl -i {q(base_url + '/public/docs/read%20me.txt')}",
        f"curl -i {base_url}/public/data/sample.json",
        f"curl -s -o /tmp/crow.png -w {png_fmt} {base_url}/public/images/crow.png",
        f"curl -s -o /dev/null -w {size_fmt} {base_url}/public/large/5mib.bin",
        f"curl -i {base_url}/public/no-such-key.txt",
        f"curl -i {base_url}/private/secret.txt",
        f"curl -i -H {q('Authorization: Bearer ' + token)} {base_url}/private/secret.txt",
        f"curl -i {base_url}/health",
        f"curl -i {base_url}/ready",
    ]


def smoke_check(proxy: ProxyProcess, seeded: Sequence[SeededObject], token: str) -> list[str]:
    """
    Fetch a few URLs through the proxy and compare with what was stored.

    :param proxy: the running proxy.
    :param seeded: the demo objects.
    :param token: a valid token for ``/private``.
    :returns: human-readable problems (empty when everything matched).
    """
    problems = []
    auth = {"Authorization": f"Bearer {token}"}
    for obj in seeded:
        private = obj.bucket != PUBLIC_BUCKET
        path = ("/private/" if private else "/public/") + urllib.parse.quote(obj.key)
        resp = proxy.get(path, timeout=30.0, headers=auth if private else None)
        print(f"  GET {path} -> {resp.status} ({len(resp.body)} bytes)")
        if resp.status != 200 or len(resp.body) != obj.size:
            problems.append(f"GET {path}: {resp.status}, {len(resp.body)} of {obj.size} bytes")
        elif resp.header("ETag") != obj.etag:
            problems.append(f"GET {path}: ETag {resp.header('ETag')} != {obj.etag}")
        if private:
            anonymous = proxy.get(path)
            print(f"  GET {path} without a token -> {anonymous.status}")
            if anonymous.status != 401:
                problems.append(f"GET {path} without a token answered {anonymous.status}")
    again = proxy.get("/public/hello.txt")
    print(f"  GET /public/hello.txt again -> X-Cache: {again.header('X-Cache')}")
    if again.header("X-Cache") != "HIT":
        problems.append(f"second GET of hello.txt: X-Cache {again.header('X-Cache')}, not HIT")
    resp = proxy.get("/public/no-such-key.txt")
    print(f"  GET /public/no-such-key.txt -> {resp.status}")
    if resp.status != 404:
        problems.append(f"missing key answered {resp.status}, expected 404")
    return problems


def _follow(path: Path, offset: int, out: IO[str]) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
    return offset + len(data)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the demo.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    :returns: the process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m yatagarasu.demo",
        description="Run moto S3 (SigV4 on) + the Yatagarasu proxy locally.",
    )
    parser.add_argument("--port", type=int, default=DEMO_PROXY_PORT, help="proxy port (8080)")
    parser.add_argument(
        "--moto-port", type=int, default=0, help="moto port (default: 5000 if free, else any)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="state directory")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="fetch every demo object through the proxy, then stop (exit 1 on mismatch)",
    )
    args = parser.parse_args(argv)

    if not port_is_free(args.port):
        print(
            f"error: port {args.port} on {LOOPBACK} is already in use. Stop whatever listens "
            f"there (e.g. a previous `make demo`) or run `python -m yatagarasu.demo --port N`.",
            file=sys.stderr,
        )
        return 2
    moto_port: int | None = args.moto_port or None
    if moto_port is None and port_is_free(DEMO_MOTO_PORT):
        moto_port = DEMO_MOTO_PORT
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    moto = MotoS3Server(workdir / "moto", port=moto_port)
    proxy: ProxyProcess | None = None
    try:
        print(f"starting moto S3 (SigV4 checking on) in {workdir / 'moto'} ...", flush=True)
        moto.start()
        print(f"moto S3 at {moto.endpoint_url}, access key {moto.access_key}", flush=True)
        seeded = seed_demo_objects(moto)
        jwt_secret = secrets.token_urlsafe(48)
        token = demo_token(jwt_secret)
        config = demo_config(moto, jwt_secret=jwt_secret, port=args.port)
        config_path = write_config(config, workdir / "yatagarasu.yaml")
        print(f"proxy config written to {config_path}", flush=True)
        log_path = workdir / "proxy.log"
        log_path.write_bytes(b"")
        print(f"starting twistd -n yatagarasu --config {config_path}", flush=True)
        proxy = start_proxy(config_path, workdir, timeout=60.0)
        if stop_requested.is_set():
            return 0
        base = proxy.base_url
        print(f"\nYatagarasu is up at {base} (pid {proxy.pid}); S3 is moto at {moto.endpoint_url}")
        print("\nObjects:")
        for obj in seeded:
            prefix = "/public/" if obj.bucket == PUBLIC_BUCKET else "/private/"
            print(f"  {prefix}{obj.key:<20} {obj.size:>8} bytes  {obj.content_type}  {obj.etag}")
        print("\nTry:")
        for line in curl_lines(base, seeded, token):
            print("  " + line)
        print("\nRun the first line twice: X-Cache says MISS, then HIT (served from memory).")
        print(f"\n/private needs a token (valid 24 h, HS256):\n  TOKEN={token}")
        print(f'  curl -i -H "Authorization: Bearer $TOKEN" {base}/private/secret.txt')
        print(flush=True)
        if args.smoke:
            problems = smoke_check(proxy, seeded, token)
            for problem in problems:
                print(f"  PROBLEM: {problem}", file=sys.stderr)
            print("smoke check " + ("failed" if problems else "passed"), flush=True)
            return 1 if problems else 0
        print("Streaming the proxy log; Ctrl-C stops the proxy and moto.\n", flush=True)
        offset = 0
        while not stop_requested.is_set():
            offset = _follow(log_path, offset, sys.stdout)
            if not proxy.is_running():
                _follow(log_path, offset, sys.stdout)
                print(f"\nthe proxy exited on its own (code {proxy.proc.returncode})")
                return 1
            stop_requested.wait(0.2)
        print("\nstopping ...", flush=True)
        code = proxy.stop(signal.SIGTERM, timeout=15.0)
        _follow(log_path, offset, sys.stdout)
        print(f"proxy exited with code {code}", flush=True)
        return 0
    except (StartupError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if proxy is not None and proxy.is_running():
            proxy.stop(signal.SIGTERM, timeout=15.0)
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
