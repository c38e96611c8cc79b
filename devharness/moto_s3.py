"""A real moto S3 server in a subprocess, with an IAM user and SigV4 checking switched on.

Needs the ``dev`` extra (moto, boto3, botocore).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devharness.http_client import http_request
from devharness.ports import LOOPBACK, free_port
from devharness.processes import LoggedProcess, tail
from devharness.waiting import StartupError, wait_until

DEFAULT_REGION = "us-east-1"

#: IAM user the moto bootstrap creates; its key is what the proxy signs with.
MOTO_USER = "yatagarasu"


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
    :param seed: seed moto's random generator before the IAM bootstrap, so that a
        :meth:`restart` creates the same access key again (moto keeps everything in memory).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        region: str = DEFAULT_REGION,
        record_requests: bool = False,
        seed: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.seed = seed
        self.host = LOOPBACK
        self.region = region
        self.record_requests = record_requests
        self._wanted_port = port
        self.port = 0
        self.access_key = ""
        self.secret_key = ""
        self.log_path = self.workdir / "moto.log"
        self.recording_path = self.workdir / "moto-requests.jsonl"
        self._process: LoggedProcess | None = None
        self._s3: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """:returns: ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """:returns: the moto process id while it runs."""
        return self._process.pid if self._process is not None else None

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
                    + tail(self.log_path)
                )
        self._bootstrap()
        return self

    def _bootstrap(self) -> None:
        try:
            if self.seed is not None:
                resp = http_request("POST", f"{self.endpoint_url}/moto-api/seed?a={self.seed}")
                if resp.status != 200:
                    raise StartupError(f"moto seed answered {resp.status}")
            self._bootstrap_iam()
            self.set_auth(True)
            self.verify_signature_checking()
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL moto (an outage: connections refused until :meth:`restart`)."""
        if self._process is not None:
            self._process.kill()
            self._process = None
        self._s3 = None

    def restart(self, timeout: float = 60.0) -> MotoS3Server:
        """
        Start moto again on the same port, empty (buckets are gone), with the same access key
        (needs ``seed``), SigV4 checking on.

        :param timeout: seconds to wait for moto to answer.
        :returns: ``self``.
        :raises StartupError: when it does not start, or the key is not the one it had.
        """
        if self.seed is None:
            raise StartupError("MotoS3Server(seed=...) is needed to restart with the same key")
        self.kill()
        before = (self.access_key, self.secret_key)
        # A client retrying against the port (the proxy's audit uploads) can reach moto between
        # the seed and the IAM call and use up random numbers: then the key differs, and moto
        # is started again (a bounded number of times).
        for _ in range(5):
            if not self._spawn(self.port, timeout):
                raise StartupError(
                    f"moto did not restart on port {self.port}:\n{tail(self.log_path)}"
                )
            self._bootstrap()
            if (self.access_key, self.secret_key) == before:
                return self
            self.kill()
        self.stop()
        raise StartupError("moto restarted with another access key despite the seed (5 times)")

    def _spawn(self, port: int, timeout: float) -> bool:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith(("AWS_", "MOTO_")) or name in ("TEST_SERVER_MODE",):
                del env[name]
        if self.record_requests:
            env["MOTO_ENABLE_RECORDING"] = "true"
            env["MOTO_RECORDER_FILEPATH"] = str(self.recording_path)
            self.recording_path.write_bytes(b"")
        process = LoggedProcess(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
            self.log_path,
            cwd=self.workdir,
            env=env,
            new_session=True,  # stopped by its owner, not by a terminal's Ctrl-C
        )
        self._process = process
        self.port = port

        def answers() -> bool:
            if not process.is_running():
                raise StartupError(f"moto exited with code {process.returncode}")
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
        if self._process is not None:
            code = self._process.stop(signal.SIGTERM, timeout)
            self._process = None
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

    def create_role(self, role: str, actions: Sequence[str] = ("s3:*",)) -> str:
        """
        Create an IAM role anyone may assume, allowed ``actions`` on ``*`` (what moto checks
        requests signed with the role's temporary credentials against). Auth is switched off
        for the duration and back on afterwards.

        :param role: unique role name.
        :param actions: IAM actions to allow.
        :returns: the role's ARN.
        """
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "*", "Federated": "*"},
                    "Action": ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"],
                }
            ],
        }
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
        }
        self.set_auth(False)
        try:
            iam = self._boto3_client("iam", "bootstrap", "bootstrap")
            arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))[
                "Role"
            ]["Arn"]
            iam.put_role_policy(
                RoleName=role, PolicyName=f"{role}-policy", PolicyDocument=json.dumps(policy)
            )
            return str(arn)
        finally:
            self.set_auth(True)

    def temporary_credentials(self, role: str, seconds: int = 3600) -> dict[str, str]:
        """
        Create a role (:meth:`create_role`) and assume it (auth off meanwhile): temporary
        credentials moto knows, whose session token it checks.

        :param role: unique role name.
        :param seconds: their lifetime.
        :returns: ``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``Expiration`` (ISO 8601),
            as the instance metadata and ECS endpoints give them.
        """
        arn = self.create_role(role)
        self.set_auth(False)
        try:
            sts = self.client("sts")
            found = sts.assume_role(RoleArn=arn, RoleSessionName=role, DurationSeconds=seconds)
        finally:
            self.set_auth(True)
        creds = found["Credentials"]
        return {
            "Code": "Success",
            "AccessKeyId": str(creds["AccessKeyId"]),
            "SecretAccessKey": str(creds["SecretAccessKey"]),
            "Token": str(creds["SessionToken"]),
            "Expiration": creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

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

    def put_large_object(self, bucket: str, key: str, body: bytes) -> str:
        """
        Store an object with a multipart upload (16 MiB parts), not recorded: moto's recorder
        would write every part's bytes to its recording.

        :param bucket: bucket name.
        :param key: object key.
        :param body: object bytes.
        :returns: the ETag exactly as S3 reports it (a multipart one, ``"...-N"``).
        """
        import io

        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        part = 16 * 1024 * 1024
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
        with self.unrecorded():
            self.s3.upload_fileobj(io.BytesIO(body), bucket, key, Config=config)
            etag = str(self.s3.head_object(Bucket=bucket, Key=key)["ETag"])
        return etag

    @contextmanager
    def unrecorded(self) -> Iterator[None]:
        """Requests made inside the ``with`` block are not recorded (nor counted)."""
        if not self.record_requests:
            yield
            return
        self._recorder("stop-recording")
        try:
            yield
        finally:
            self._recorder("start-recording")

    def _recorder(self, action: str) -> None:
        resp = http_request("POST", f"{self.endpoint_url}/moto-api/recorder/{action}")
        if resp.status != 200:
            raise RuntimeError(f"moto {action} answered {resp.status}")

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
    """
    Decode concatenated JSON objects (moto writes one per line, but threads may interleave the
    trailing newlines); undecodable garbage is skipped up to the next ``{``.

    :param text: the recording file's text.
    :returns: the JSON objects, in order.
    """
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


def make_moto(workdir: Path) -> MotoS3Server:
    """
    Start moto for tests: request recording on, SigV4 checking on and verified.

    :param workdir: directory for moto's log and recording.
    :returns: the running server.
    """
    return MotoS3Server(workdir, record_requests=True).start()
