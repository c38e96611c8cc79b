"""What the demo serves: two buckets and their objects, the proxy config and a JWT for
``/private``, and the curl lines to try. This is the one place to extend the demo."""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config, proxy_config

DEMO_PROXY_PORT = 8080
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
