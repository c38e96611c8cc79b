"""
The values the plugin contracts (:mod:`yatagarasu.interfaces`) exchange: cache keys, entries
and counters, and the identity an auth scheme vouches for. Plain frozen data, importing only
the standard library and Twisted, so that every layer of the proxy (and every plugin) can use
them. One is not plain data: :class:`MappedBody`, a body in a sealed memory file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from twisted.web.http_headers import Headers

#: bytes in a mebibyte (the ``*_mb`` settings are MiB)
MIB = 1024 * 1024


@dataclass(frozen=True)
class CacheKey:
    """
    Identifies one cached object. The one place cache keys are derived: get, set, purge and
    stats all use it.

    :ivar bucket: the configured bucket *name* (``buckets[].name``), not the S3 bucket.
    :ivar key: the object key, decoded.
    :ivar variant: reserved for representations of the same object (empty today).
    """

    bucket: str
    key: str
    variant: str = ""

    @property
    def text(self) -> str:
        """Printable, unambiguous form: ``bucket/key`` (plus ``#variant`` when set)."""
        base = f"{self.bucket}/{self.key}"
        return f"{base}#{self.variant}" if self.variant else base

    @property
    def digest(self) -> str:
        """Hex SHA-256 of :attr:`text`: safe as a file name or a Redis key suffix."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FileBody:
    """
    A body kept in a file (disk layer): served with a producer, never read whole.

    :ivar path: the file; the body is ``length`` bytes starting at ``offset``.
    """

    path: str
    offset: int
    length: int

    def read(self) -> bytes:
        """
        Read the whole body (blocking file I/O: in a thread, or for bodies known to be small).

        :returns: its bytes (fewer than :attr:`length` when the file was cut short).
        :raises OSError: when the file cannot be read (it was evicted meanwhile).
        """
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)


class MappedBody:
    """
    A body kept in an anonymous memory file (``memfd_create``), sealed against any change: the
    memory layer keeps large bodies this way, so that a hit can be sent to a TCP client with
    ``sendfile`` (no copy from this process into the socket). The file is closed when the last
    reference goes (the cache's entry, or a connection that still has it queued).

    :ivar length: the body's length in bytes.
    :cvar open_files: how many are open in this process (each holds a file descriptor).
    """

    __slots__ = ("_fd", "length")

    open_files = 0

    def __init__(self, data: bytes) -> None:
        """
        :param data: the body.
        :raises OSError: no memory file could be made (out of file descriptors or memory).
        """
        fd = os.memfd_create("yatagarasu-body", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            fcntl.fcntl(
                fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
            )
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.length = len(view)
        MappedBody.open_files += 1

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)  # not set when __init__ failed
        if fd is not None:
            MappedBody.open_files -= 1
            os.close(fd)

    def __len__(self) -> int:
        return self.length

    def fileno(self) -> int:
        """:returns: the memory file's descriptor (for ``sendfile``), open while this is alive."""
        return self._fd

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """
        :param offset: where to start.
        :param size: how many bytes (to the end when ``None``).
        :returns: a copy of that part of the body.
        """
        end = self.length if size is None else min(self.length, offset + size)
        pieces = []
        while offset < end:
            piece = os.pread(self._fd, end - offset, offset)
            if not piece:  # pragma: no cover - a sealed file cannot shrink
                break
            pieces.append(piece)
            offset += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """
    A complete ``200`` response to a GET, as stored.

    :ivar headers: response headers to replay, lowercase names (content-type, etag,
        last-modified, cache-control, content-encoding, content-disposition,
        content-language, expires, accept-ranges) — never content-length, never x-amz-*.
    :ivar body: the bytes, a :class:`FileBody` for layers that keep bodies in files, or a
        :class:`MappedBody` (the memory layer's large bodies; the tiered cache hands other
        layers' ``set`` only ``bytes`` or ``FileBody`` bodies).
    :ivar stored_at: wall-clock time (epoch seconds) the response was received from S3 or
        last revalidated; ``Age`` is computed from it.
    :ivar expires_at: wall-clock time until which the entry is fresh.
    :ivar retain_until: wall-clock time after which layers may drop the entry (an expired
        entry is kept a while for revalidation and ``stale_if_error``); layers with a TTL
        (Redis) use ``retain_until - now``.
    :ivar revalidate: ``Cache-Control: no-cache`` — always revalidate before serving.

    Slots, no ``__dict__``: a memory layer holds hundreds of thousands of entries, and each
    object the cycle collector tracks lengthens its full collections
    (``bench/gc_pause.py``). The header index holds only ``bytes``, so the collector does
    not track it.
    """

    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | FileBody | MappedBody
    stored_at: float
    expires_at: float
    retain_until: float
    revalidate: bool = False
    _index: dict[bytes, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)
    _head_lines: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update(self.headers)

    @property
    def head_lines(self) -> bytes:
        """
        The stored headers as HTTP/1.1 header lines (``Name: value\\r\\n`` each), names in
        the usual capitalisation; encoded on first use and kept with the entry, so a hit
        served again and again does not encode them again.
        """
        lines = self._head_lines
        if lines is None:
            lines = self._encode_head_lines()
            object.__setattr__(self, "_head_lines", lines)  # frozen: set once, as a cache
        return lines

    def _encode_head_lines(self) -> bytes:
        headers = Headers()
        for name, value in self.headers:
            headers.addRawHeader(name, value)
        return b"".join(
            b"%s: %s\r\n" % (name, value)
            for name, values in headers.getAllRawHeaders()
            for value in values
        )

    def with_body(self, body: bytes | FileBody | MappedBody) -> CacheEntry:
        """
        :param body: another body for the same response.
        :returns: this entry with that body, sharing this one's :attr:`head_lines` (encoded
            once for both).
        """
        entry = CacheEntry(
            self.headers, body, self.stored_at, self.expires_at, self.retain_until, self.revalidate
        )
        entry.reuse_head_lines(self.head_lines)
        return entry

    def reuse_head_lines(self, lines: bytes) -> None:
        """
        :param lines: :attr:`head_lines` already encoded for the same headers (another entry's),
            kept as this entry's instead of encoding them again.
        """
        object.__setattr__(self, "_head_lines", lines)

    def header(self, name: bytes) -> bytes | None:
        """:returns: the value of a (lowercase) header, or ``None``."""
        return self._index.get(name)

    @property
    def length(self) -> int:
        """Body length in bytes."""
        body = self.body
        return len(body) if isinstance(body, bytes) else body.length

    @property
    def size(self) -> int:
        """Bytes this entry costs a layer: body plus headers (approximately)."""
        return self.length + sum(len(k) + len(v) + 4 for k, v in self.headers) + 64

    def is_fresh(self, now: float) -> bool:
        """:returns: whether the entry may be served without asking S3."""
        return not self.revalidate and now < self.expires_at


@dataclass(frozen=True)
class LayerStats:
    """
    A snapshot of a cache's counters (the shape of the admin API's stats documents).

    ``max_size_bytes`` is the configured bound (0 when the layer has none it can report).
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    current_size_bytes: int = 0
    current_item_count: int = 0
    max_size_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``, 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_json(self) -> dict[str, float | int]:
        """:returns: the admin API document for these counters."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "evictions": self.evictions,
            "current_size_bytes": self.current_size_bytes,
            "current_item_count": self.current_item_count,
            "max_size_bytes": self.max_size_bytes,
        }


@dataclass(frozen=True)
class Identity:
    """
    An authenticated client.

    :ivar subject: who (JWT ``sub``), or ``None`` when the scheme has no notion of it.
    :ivar claims: everything the scheme learned (JWT claims), for rules and later stages.
    :ivar scheme: the name of the scheme that vouched for it.
    """

    subject: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)
    scheme: str = ""


@dataclass(frozen=True, slots=True)
class AuthorizationQuery:
    """
    What an authorizer (:class:`yatagarasu.interfaces.IAuthorizer`) decides on: one request
    that passed authentication.

    :ivar bucket: the configured bucket *name* (``buckets[].name``), not the S3 bucket.
    :ivar key: the object key, decoded.
    :ivar method: ``GET`` or ``HEAD``.
    :ivar client_ip: the client address (after ``server.trusted_proxies`` resolution).
    :ivar identity: who the bucket's auth scheme vouched for, ``None`` on a public bucket.
    """

    bucket: str
    key: str
    method: str
    client_ip: str
    identity: Identity | None = None


#: :attr:`Decision.result` values
DECISION_RESULTS = ("allow", "deny", "error", "cached")


@dataclass(frozen=True, slots=True)
class Decision:
    """
    An authorizer's answer.

    :ivar allowed: whether the request may go on.
    :ivar result: how it was reached: ``allow`` or ``deny`` (the policy service answered),
        ``cached`` (a decision remembered from an earlier answer), ``error`` (no usable answer:
        ``allowed`` is then what the fail mode says).
    :ivar reason: why, for the error message and the log (no secrets).
    """

    allowed: bool
    result: str
    reason: str = ""


@dataclass(slots=True)
class AuditRecord:
    """
    One request as the audit trail records it (DESIGN.md §3), built once the response ended.

    Handed to every audit sink (:class:`yatagarasu.interfaces.IAuditSink`) already redacted:
    no token, ``Authorization`` value, token or secret-looking query parameter, or configured
    sensitive header is in it. Sinks serialize it with a
    :class:`yatagarasu.audit.record.JsonEncoder` (or their own way) once the response ended.

    :ivar started: when the request arrived (epoch seconds); the record's ``timestamp``.
    :ivar correlation_id: the response's ``X-Request-ID``.
    :ivar client_ip: the client address (``X-Forwarded-For`` only from trusted proxies).
    :ivar user: the authenticated subject (JWT ``sub``, a plugin identity's), else ``None``.
    :ivar bucket: the configured bucket name, ``None`` off bucket routes.
    :ivar object_key: the decoded object key, when the request got that far.
    :ivar http_method: ``GET``, ``HEAD``...
    :ivar request_path: the path, without the query string.
    :ivar response_status: the status sent.
    :ivar response_size_bytes: body bytes actually sent (less than the length when the client
        went away mid-body).
    :ivar duration_ms: from arrival to the last byte handed to the connection.
    :ivar cache_status: ``hit|miss|bypass|stale|revalidated``, ``None`` where nothing caches.
    :ivar user_agent: the ``User-Agent`` header.
    :ivar referer: the ``Referer`` header, with secret-looking query parameters redacted.
    :ivar trace_id: the request's trace id (32 hex digits) when ``observability.tracing`` is
        on; ``None`` (and left out of the JSON) otherwise. An addition to DESIGN.md §3.
    """

    started: float
    correlation_id: str
    client_ip: str
    user: str | None
    bucket: str | None
    object_key: str | None
    http_method: str
    request_path: str
    response_status: int
    response_size_bytes: int
    duration_ms: float
    cache_status: str | None
    user_agent: str | None
    referer: str | None
    trace_id: str | None = None


#: the scopes a rate limit applies to (bounded: they label a metric)
RATE_SCOPES = ("global", "per_ip", "bucket", "per_user")


@dataclass(frozen=True, eq=False)
class RateLimit:
    """
    One rate limit as the limiters apply it. Compared (and hashed) by identity: each one
    built from the configuration is one limit with state of its own, found by a cheap lookup.

    :ivar scope: what it counts: ``global``, ``per_ip``, ``bucket`` or ``per_user``.
    :ivar rate: requests per second, sustained.
    :ivar burst: the most requests at once (token bucket capacity; sliding window limit).
    :ivar algorithm: ``token_bucket`` or ``sliding_window``.
    """

    scope: str
    rate: float
    burst: int
    algorithm: str = "token_bucket"
    #: seconds per request (``1 / rate``), computed once
    interval: float = field(init=False, repr=False)
    #: seconds of requests a full bucket holds (``burst / rate``), computed once
    tolerance: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", 1.0 / self.rate)
        object.__setattr__(self, "tolerance", self.burst / self.rate)

    @property
    def window(self) -> float:
        """:returns: the sliding window's length, seconds (``burst / rate``)."""
        return self.burst / self.rate


class RateDecision(NamedTuple):
    """
    What a limiter decided for one request (over all the limits it was checked against). A
    named tuple: one is made per limited request, and a tuple is the cheapest to make.

    :ivar allowed: whether the request may go on (it was counted in every limit).
    :ivar scope: the limit that decided: the refusing one, else the one with the least left.
    :ivar limit: that limit's burst (``RateLimit-Limit``).
    :ivar remaining: requests left in it now (``RateLimit-Remaining``).
    :ivar reset: seconds until it is whole again (``RateLimit-Reset``).
    :ivar retry_after: when refused, seconds until a request would be allowed.
    :ivar degraded: the shared backend could not answer; ``allowed`` is the fail mode's.
    """

    allowed: bool
    scope: str
    limit: int
    remaining: int
    reset: float
    retry_after: float = 0.0
    degraded: bool = False
