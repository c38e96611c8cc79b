"""
The twisted.web ``Site`` of the proxy: request ids, raw-target checks, concurrency limit,
connection tracking for graceful shutdown, and, once each response has ended, the metrics,
one access-log event, one audit record, the slow-request log and the end of the server span.

What a site serves (the Resource tree, trusted proxies, limits) is a :class:`Served`, swapped
whole by a hot reload (:meth:`ProxySite.serve`) while the site object, its listener and its
connection tracking stay. Each request keeps the ``Served`` it started with until it ends.
The audit trail and the tracer belong to the site (the process): a reload keeps them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO, Any, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import datetimeToString
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import Request, Site, version
from zope.interface import implementer

from yatagarasu.audit.trail import AuditTrail
from yatagarasu.auth.network import ClientAddressResolver
from yatagarasu.config.schema import SecurityLimits
from yatagarasu.errors import HTTPError
from yatagarasu.http.conditionals import Conditions, parse_conditions
from yatagarasu.http.status import reason_phrase_bytes
from yatagarasu.interfaces import IAccessEntry, IAccessLog
from yatagarasu.logs import LoggerAccessLog
from yatagarasu.metrics import Metrics
from yatagarasu.observability.slow_requests import SlowRequestLog
from yatagarasu.observability.timings import RequestTimings
from yatagarasu.observability.tracing import Tracing
from yatagarasu.per_second import PerSecond
from yatagarasu.request_logging import RequestLogPolicy
from yatagarasu.turn_writes import SentAtTurnEnd
from yatagarasu.values import AuditRecord, MappedBody
from yatagarasu.web.channel import LimitedHTTPChannel, ResponseHeaders, encode_head
from yatagarasu.web.request_id import new_request_id, request_id_for
from yatagarasu.web.responses import write_error
from yatagarasu.web.target import traversal_reason

#: ``observability.request_logging.log_requests``: one event as each request arrives
request_log = Logger(namespace="yatagarasu.request")


@dataclass(eq=False)
class Served:
    """
    What a site serves, as one configuration generation built it.

    Requests pin it while they run (:meth:`pin`, :meth:`unpin`): after a reload the old one
    lives on until its last request ended (:meth:`wait_idle`).

    :ivar resource: the root of the Resource tree.
    :ivar addresses: how to find the client address (trusted proxies).
    :ivar limits: request limits of connections accepted while it is served.
    :ivar max_concurrent_requests: above this many in-flight requests, answer 503.
    :ivar access_log_enabled: whether the per-request access event is wanted.
    :ivar send_buffer_bytes: ``SO_SNDBUF`` of accepted sockets (``None``: kernel default).
    :ivar request_logging: which requests the access log shows and what it adds
        (``observability.request_logging``; ``None``: every request, nothing added).
    :ivar slow_log: the slow-request log (``None``: off).
    :ivar requests: requests started on it and not ended yet.
    """

    resource: IResource
    addresses: ClientAddressResolver
    limits: SecurityLimits
    max_concurrent_requests: int
    access_log_enabled: bool = True
    send_buffer_bytes: int | None = None
    request_logging: RequestLogPolicy | None = None
    slow_log: SlowRequestLog | None = None
    requests: int = 0
    _idle_waiters: list[Deferred[None]] = field(default_factory=list, repr=False)

    def pin(self) -> None:
        """A request started on it."""
        self.requests += 1

    def unpin(self) -> None:
        """A request that started on it ended (finished, or its connection was lost)."""
        self.requests -= 1
        if self.requests == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def wait_idle(self) -> Deferred[None]:
        """:returns: a Deferred that fires once no request pins it."""
        if self.requests == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


class ProxyRequest(Request):
    """
    A request with an id, a start time and the bucket/key it addressed (for the access log).

    :ivar request_id: echoed as ``X-Request-ID`` and ``X-Correlation-ID`` on every response.
    :ivar timings: its timing record (and server span), when tracing or the slow-request log
        is on; ``None`` otherwise, and then no stage of the request is measured.
    """

    defaultContentType = None
    request_id = ""
    started = 0.0
    bucket: str | None = None
    object_key: str | None = None
    subject: str | None = None
    #: the ``X-Cache`` value sent (``b"HIT"``...), ``None`` where nothing caches
    cache_status: bytes | None = None
    #: how the bucket's authentication ended (``ok``, ``missing``...), ``None``: not asked
    auth_result: str | None = None
    served: Served | None = None
    timings: RequestTimings | None = None
    _client_address: str | None = None
    _conditions: Conditions | None = None
    _body_bytes = 0
    _accounted = False
    #: header lines :meth:`write_head` sent beyond ``responseHeaders`` (a cached entry's)
    _head_extra = b""
    #: answered by the channel while the request was parsed (it audits those itself)
    _refused = False
    #: whether it may carry an id of its own (``False``: the channel saw no such field)
    id_fields = True

    @property
    def proxy_site(self) -> ProxySite:
        """The site this request arrived on."""
        channel: Any = self.channel
        return cast(ProxySite, channel.site)

    @property
    def conditions(self) -> Conditions:
        """The request's conditional and range fields, parsed once (on first use)."""
        if self._conditions is None:
            self._conditions = parse_conditions(self.requestHeaders)
        return self._conditions

    #: identity, as in twisted.web, without a Python-level ``__hash__`` on every set operation
    __hash__ = object.__hash__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.responseHeaders = self._fixed = ResponseHeaders()

    def process(self) -> None:
        channel: LimitedHTTPChannel = self.channel  # type: ignore[assignment]
        site: ProxySite = channel.site
        self.site = site
        self.started = site.clock.seconds()
        headers = self.requestHeaders
        self.request_id = request_id_for(headers) if self.id_fields else new_request_id()
        rid = self.request_id.encode("ascii")
        ids = b"X-Request-Id: %s\r\nX-Correlation-Id: %s\r\n" % (rid, rid)
        self._fixed.prefix = ids + site.server_and_date(self.started)
        if channel._rejected:  # a limit was hit while the body arrived: already answered
            self._refused = True
            return
        site.request_started(self)
        served = self.served = site.served
        served.pin()
        if site.tracing is not None:
            self.timings = site.tracing.start(
                self.requestHeaders,
                self.started,
                self.method.decode("ascii", "replace"),
                self._span_attributes(),
            )
        elif served.slow_log is not None:
            self.timings = RequestTimings(site.clock, self.started)
        if served.request_logging is not None and served.request_logging.log_requests:
            site.request_arrived(self, served.request_logging)
        reason = traversal_reason(self.uri)
        if reason is not None:
            write_error(self, HTTPError(400, f"rejected path: {reason}"), self.request_id)
            return
        if site.active_count > served.max_concurrent_requests:
            error = HTTPError(503, "too many concurrent requests", headers=[("Retry-After", "1")])
            write_error(self, error, self.request_id)
            return
        if self.path == b"*":  # "OPTIONS *": twisted.web's own answer (it adds Server, Date)
            if self.method != b"OPTIONS":  # asterisk-form is for OPTIONS only (RFC 9112 §3.2.4)
                allow = [("Allow", "OPTIONS")]
                error = HTTPError(405, "the target * is for OPTIONS only", headers=allow)
                write_error(self, error, self.request_id)
                return
            self._fixed.prefix = ids
            super().process()
            return
        # twisted.web's Request.process, without content encoders (the proxy uses none) and
        # without Server and Date (in the prefix above, made once a second).
        self.prepath = []
        segments = self.path[1:].split(b"/")
        self.postpath = [unquote_to_bytes(s) for s in segments] if b"%" in self.path else segments
        try:
            self.render(site.getResourceFor(self))  # the pinned tree (ProxySite.getResourceFor)
        except BaseException:
            self.processingFailed(Failure())

    def _span_attributes(self) -> dict[str, str]:
        """The server span's attributes known on arrival (HTTP semantic conventions)."""
        agent = self.requestHeaders.getRawHeaders(b"user-agent")
        attributes = {
            "http.request.method": self.method.decode("ascii", "replace"),
            "url.path": self.path.decode("utf-8", "replace"),
            "url.scheme": "https" if self.isSecure() else "http",
            "network.protocol.version": self.clientproto.decode("ascii", "replace")[5:],
            "client.address": self.client_address,
            "yatagarasu.request_id": self.request_id,
        }
        if agent:
            attributes["user_agent.original"] = agent[0].decode("utf-8", "replace")
        return attributes

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """
        Set the status; its reason phrase comes from the RFC 9110 table, not Twisted's.

        :param code: the status code.
        :param message: a reason phrase; ``None`` (every caller in the proxy): the table's.
        """
        super().setResponseCode(code, reason_phrase_bytes(code) if message is None else message)

    def set_cache_status(self, label: bytes) -> None:
        """
        Send ``X-Cache: <label>`` and remember it for the access log and the audit record.

        :param label: ``HIT``, ``MISS``, ``BYPASS``, ``STALE`` or ``REVALIDATED``.
        """
        self.cache_status = label
        self.setHeader(b"x-cache", label)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        channel = cast(LimitedHTTPChannel, self.channel)
        if self._body_bytes > channel.limits.max_body_size:
            channel.reject(413, f"request body larger than {channel.limits.max_body_size} bytes")
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        site = self.proxy_site if self.channel is not None else None
        super().connectionLost(reason)
        if self.request_id and site is not None:  # process() ran (a clock may read 0.0)
            site.request_ended(self, aborted=True)

    @property
    def client_address(self) -> str:
        """The client's address: the peer, or what trusted proxies say in ``X-Forwarded-For``."""
        if self._client_address is None:
            # self.served: set in process(), and kept after a disconnect
            addresses = (self.served or cast(ProxySite, self.site).served).addresses
            self._client_address = addresses.client_ip(
                self.client_ip(), lambda: self.requestHeaders.getRawHeaders(b"x-forwarded-for")
            )
        return self._client_address

    def write_head(self, code: int, extra: bytes = b"") -> None:
        """
        Send the status line and the headers now: those set so far, then ``extra``.

        The cheap way to start a response whose headers are known ahead (a cached entry's,
        encoded once per entry): they never pass through ``responseHeaders``. Afterwards
        ``write`` sends body bytes and ``finish`` ends the response, as usual. The headers
        must include ``Content-Length`` (no chunked encoding is set up), and the caller
        writes no body for HEAD.

        :param code: the status code.
        :param extra: header lines already encoded, ``Name: value\\r\\n`` each.
        """
        if self.finished:
            raise RuntimeError("write_head called after the request finished")
        self.setResponseCode(code)
        if self._disconnected:
            return
        self.startedWriting = 1
        self._head_extra = extra
        head = encode_head(
            self.clientproto, b"%d" % code, self.code_message, self.responseHeaders, extra
        )
        # an annotation, not typing.cast: no function call per response
        channel: LimitedHTTPChannel = self.channel  # type: ignore[assignment]
        channel.write(head)

    def write_body_file(self, body: MappedBody, offset: int, size: int) -> None:
        """
        After :meth:`write_head`, send ``size`` bytes of ``body`` from ``offset`` as (part
        of) the response's body: with ``sendfile`` when the connection is a plain TCP one
        (:meth:`yatagarasu.turn_writes.SentAtTurnEnd.write_file`), else as a copy.

        :param body: the cached body.
        :param offset: where the bytes start.
        :param size: how many (more than zero).
        """
        if self.finished:
            raise RuntimeError("write_body_file called after the request finished")
        if self._disconnected:
            return
        self.sentLength += size
        transport: Any = self.channel.transport
        # Not getattr: TLS (a ProtocolWrapper) would hand it the TCP transport's write_file.
        if isinstance(transport, SentAtTurnEnd):
            transport.write_file(body, offset, size)
        else:  # TLS, a PROXY-protocol wrapper, a test's transport
            transport.write(body.read(offset, size))

    def client_ip(self) -> str:
        """The peer's IP address (or the UNIX socket path)."""
        address: IAddress = self.getClientAddress()
        return str(getattr(address, "host", address))


def audit_record(
    request: ProxyRequest, duration: float, trace_id: str | None = None
) -> AuditRecord:
    """
    :param request: a request whose response ended (completely or not).
    :param duration: seconds from its arrival to the end of the response.
    :param trace_id: its trace id, when traced.
    :returns: its audit record, not redacted yet.
    """
    method = request.method
    label = request.cache_status
    headers = request.requestHeaders
    agent = headers.getRawHeaders(b"user-agent")
    referer = headers.getRawHeaders(b"referer")
    return AuditRecord(
        request.started,
        request.request_id,
        request.client_address,
        request.subject,
        request.bucket,
        request.object_key,
        _METHODS.get(method) or method.decode("ascii", "replace"),
        request.path.decode("utf-8", "replace"),
        request.code,
        request.sentLength,
        _milliseconds(duration),
        _CACHE_STATUS.get(label) or label.decode("latin-1").lower() if label else None,
        agent[0].decode("utf-8", "replace") if agent else None,
        referer[0].decode("utf-8", "replace") if referer else None,
        trace_id,
    )


_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"OPTIONS")}
_ACCESS = "{client_ip} {method} {path} {status} {bytes_sent}B {duration_ms}ms"
_TRACED_ACCESS = _ACCESS + " trace {trace_id}"
_LABELS = (b"HIT", b"MISS", b"BYPASS", b"STALE", b"REVALIDATED")
_CACHE_STATUS = {label: label.decode().lower() for label in _LABELS}
_LABEL_TEXT = {label: label.decode() for label in _LABELS}


def _response_header_pairs(request: ProxyRequest) -> Iterator[tuple[bytes, bytes]]:
    """:returns: ``(name, value)`` of every header line the response sent, in order."""
    headers = request.responseHeaders
    encoded = headers.prefix if isinstance(headers, ResponseHeaders) else b""
    yield from _lines(encoded)
    for name, values in headers.getAllRawHeaders():
        for value in values:
            yield name, value
    yield from _lines(request._head_extra)


@implementer(IAccessEntry)
class AccessEntry:
    """
    A request's access-log entry (:class:`~yatagarasu.interfaces.IAccessEntry`), read from the
    request when the log asks: a text line is made from seven plain values, without the
    fields.

    :param request: a request whose response ended (completely or not).
    :param duration: seconds from its arrival to the end of the response.
    :param aborted: whether the client went away before the response ended.
    :param policy: the ``request_logging`` policy it is logged with (the user agent's
        redaction, the response's headers).
    :param trace_id: its trace id, when traced.
    """

    __slots__ = ("_aborted", "_duration", "_policy", "_request", "_trace_id", "template")

    def __init__(
        self,
        request: ProxyRequest,
        duration: float,
        aborted: bool,
        policy: RequestLogPolicy | None = None,
        trace_id: str | None = None,
    ) -> None:
        self._request = request
        self._duration = duration
        self._aborted = aborted
        self._policy = policy
        self._trace_id = trace_id
        self.template = _ACCESS if trace_id is None else _TRACED_ACCESS

    def message_values(self) -> tuple[str, bytes, bytes, int, int, float, str | None]:
        request = self._request
        return (
            request.client_address,
            request.method,
            request.path,
            request.code,
            request.sentLength,
            self._duration,
            self._trace_id,
        )

    @staticmethod
    def format_message(values: tuple[str, bytes, bytes, int, int, float, str | None]) -> str:
        client, method, path, code, sent, duration, trace_id = values
        # the template filled in, as one f-string (str.format_map costs twice as much)
        text = (
            f"{client} {_METHODS.get(method) or method.decode('ascii', 'replace')} "
            f"{path.decode('utf-8', 'replace')} {code} {sent}B {_milliseconds(duration)}ms"
        )
        return text if trace_id is None else f"{text} trace {trace_id}"

    def fields(self) -> dict[str, Any]:
        request = self._request
        method = request.method
        label = request.cache_status
        user_agent = (request.getHeader(b"user-agent") or b"").decode("utf-8", "replace")
        policy = self._policy
        fields: dict[str, Any] = {
            "request_id": request.request_id,
            "client_ip": request.client_address,
            "user": request.subject,
            "method": _METHODS.get(method) or method.decode("ascii", "replace"),
            "path": request.path.decode("utf-8", "replace"),
            "status": request.code,
            "bytes_sent": request.sentLength,
            "duration_ms": _milliseconds(self._duration),
            "bucket": request.bucket,
            "object_key": request.object_key,
            "cache": _LABEL_TEXT.get(label) or label.decode() if label else None,
            "aborted": self._aborted,
            "user_agent": user_agent if policy is None else policy.user_agent(user_agent),
        }
        if self._trace_id is not None:
            fields["trace_id"] = self._trace_id
        if policy is not None and policy.log_responses:
            fields["response_headers"] = policy.headers(_response_header_pairs(request))
        return fields


def _milliseconds(seconds: float) -> float:
    """:returns: ``seconds`` in milliseconds, rounded to 3 decimals (``round`` costs more)."""
    return int(seconds * 1_000_000 + 0.5) / 1000


def _lines(encoded: bytes) -> Iterator[tuple[bytes, bytes]]:
    for line in encoded.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            yield name, value.strip()


def _server_and_date(second: int) -> bytes:
    return b"Server: %s\r\nDate: %s\r\n" % (version, datetimeToString(second))


class ProxySite(Site):
    """
    The proxy's ``Site``.

    :param resource: the root resource.
    :param clock: time source for durations.
    :param limits: request limits for every connection.
    :param max_concurrent_requests: above this many in-flight requests, answer 503.
    :param addresses: how to find the client address (trusted proxies).
    :param metrics: where finished requests are counted.
    :param access_log_enabled: whether the per-request access event (level info) is wanted
        at all; when the log level drops it anyway, building it is skipped.
    :param access_log: where access lines go (default: twisted.logger events); the
        process's, kept by a reload.
    :param send_buffer_bytes: ``SO_SNDBUF`` of accepted sockets (``None``: kernel default).
    :param draining: whether a graceful shutdown has begun (responses then close their
        connection instead of keeping it alive).
    :param idle_timeout: seconds an idle keep-alive connection is kept.
    :param audit: where each request's audit record goes (``None``: no audit trail, and no
        record is built).
    :param extra_headers: header lines added to every response, encoded (``Name: v\r\n``
        each; the worker number when ``server.workers`` > 1).
    :param request_logging: which requests the access log shows and what it adds
        (``None``: every request, nothing added).
    :param tracing: the process's tracer (``None``: tracing is off, no span is made).
    :param slow_log: the slow-request log (``None``: off).
    """

    protocol = LimitedHTTPChannel  # type: ignore[assignment]
    requestFactory = ProxyRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        clock: IReactorTime,
        limits: SecurityLimits,
        max_concurrent_requests: int,
        addresses: ClientAddressResolver,
        metrics: Metrics,
        access_log_enabled: bool = True,
        access_log: IAccessLog | None = None,
        send_buffer_bytes: int | None = None,
        draining: Callable[[], bool] = lambda: False,
        idle_timeout: float = 60.0,
        audit: AuditTrail | None = None,
        extra_headers: bytes = b"",
        request_logging: RequestLogPolicy | None = None,
        tracing: Tracing | None = None,
        slow_log: SlowRequestLog | None = None,
    ) -> None:
        super().__init__(resource, reactor=clock)
        self.clock = clock
        self.metrics = metrics
        self.draining = draining
        self.idle_timeout = idle_timeout
        self.audit = audit
        self.tracing = tracing
        self.access_log = access_log if access_log is not None else LoggerAccessLog()
        #: what new requests are served with (:meth:`serve` swaps it)
        self.served = Served(
            resource,
            addresses,
            limits,
            max_concurrent_requests,
            access_log_enabled,
            send_buffer_bytes,
            request_logging,
            slow_log,
        )
        self._active: set[ProxyRequest] = set()
        self._channels: set[LimitedHTTPChannel] = set()
        metrics.watch_site(self)
        self._closed_waiters: list[Deferred[None]] = []
        #: the ``Server`` and ``Date`` header lines for a time (epoch seconds)
        self.server_and_date = (
            PerSecond(lambda second: _server_and_date(second) + extra_headers)
            if extra_headers
            else PerSecond(_server_and_date)
        )

    def getContentFile(self, length: int | None) -> IO[bytes]:
        """
        twisted.web's hook for where a request's body goes (``Request.gotLength`` looks for it
        on every request, and raised and caught an ``AttributeError`` without it): in memory
        when its declared length is under 100,000 bytes, else in a temporary file, as
        twisted.web's own default does.

        :param length: the declared length of the body (``None``: not declared).
        """
        if length is not None and length < 100_000:
            return BytesIO()
        return tempfile.TemporaryFile()

    def serve(self, served: Served) -> Served:
        """
        Serve new requests with ``served`` (a hot reload); requests already started keep theirs.

        Connections accepted from now on get its limits; open ones keep those they got.

        :param served: what to serve.
        :returns: what was served until now.
        """
        previous, self.served = self.served, served
        self.resource = served.resource
        return previous

    @property
    def addresses(self) -> ClientAddressResolver:
        """How new requests find the client address."""
        return self.served.addresses

    @property
    def limits(self) -> SecurityLimits:
        """The request limits of new connections."""
        return self.served.limits

    def getResourceFor(self, request: Request) -> IResource:
        """The resource for ``request`` in the tree it pinned (else the current one)."""
        served = getattr(request, "served", None) or self.served
        request.site = self
        request.sitepath = list(request.prepath or [])  # type: ignore[attr-defined]
        resource: IResource = getChildForRequest(served.resource, request)
        return resource

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel = cast(LimitedHTTPChannel, super().buildProtocol(addr))
        served = self.served
        channel.configure(served.limits, self.idle_timeout, served.send_buffer_bytes)
        return channel

    @property
    def active_count(self) -> int:
        """Requests received and not yet finished."""
        return len(self._active)

    def request_started(self, request: ProxyRequest) -> None:
        """
        Track a request until it ends.

        :param request: the request that started.
        """
        self._active.add(request)

    def request_ended(self, request: ProxyRequest, *, aborted: bool) -> None:
        """
        Stop tracking a request, count it, write its access-log event and its audit record,
        log it when slow and end its server span (once).

        :param request: the request that ended.
        :param aborted: whether the connection went away before the response was complete.
        """
        if request._accounted:
            return
        request._accounted = True
        self._active.discard(request)
        served = request.served
        if served is not None:
            served.unpin()
        ended = self.clock.seconds()
        duration = ended - request.started
        metrics = self.metrics
        metrics.request(
            request.bucket,
            request.method,
            request.code,
            duration,
            request.sentLength,
            request.cache_status,
        )
        if request.auth_result is not None:
            metrics.auth_result(request.bucket or "-", request.auth_result)
        timings = request.timings
        trace_id = timings.trace_id if timings is not None else None
        served = served or self.served
        if served.access_log_enabled:
            policy = served.request_logging
            if policy is None or policy.response_wanted(
                request.path.decode("utf-8", "replace"), request.code
            ):
                entry = AccessEntry(request, duration, aborted, policy, trace_id)
                self.access_log.write(ended, entry)
        audit = self.audit
        if audit is not None and not request._refused and audit.records(request.path):
            audit.emit(audit_record(request, duration, trace_id))
        if timings is not None:
            self._timings_ended(request, timings, ended, aborted, served or self.served)

    def _timings_ended(
        self,
        request: ProxyRequest,
        timings: RequestTimings,
        ended: float,
        aborted: bool,
        served: Served,
    ) -> None:
        """The slow-request log, then the end of the server span."""
        method = request.method.decode("ascii", "replace")
        if served.slow_log is not None:
            served.slow_log.observe(
                timings,
                ended,
                request_id=request.request_id,
                method=method,
                path=request.path.decode("utf-8", "replace"),
                status=request.code,
                bucket=request.bucket,
            )
        label = request.cache_status
        timings.finish(
            ended,
            {
                "http.response.status_code": request.code,
                "http.response.body.size": request.sentLength,
                "yatagarasu.bucket": request.bucket,
                "yatagarasu.object_key": request.object_key,
                "yatagarasu.cache_status": label.decode("latin-1").lower() if label else None,
                "yatagarasu.aborted": True if aborted else None,
                "error.type": str(request.code) if request.code >= 500 else None,
            },
            server_error=request.code >= 500,
        )

    def request_arrived(self, request: ProxyRequest, policy: RequestLogPolicy) -> None:
        """
        Write the ``yatagarasu.request`` event of a request that just arrived
        (``request_logging.log_requests``), when its path is wanted.

        :param request: the request, its id chosen.
        :param policy: the request logging policy it is served with.
        """
        if not policy.path_wanted(request.path.decode("utf-8", "replace")):
            return
        request_log.info(
            "{client_ip} {method} {target} arrived",
            request_id=request.request_id,
            client_ip=request.client_address,
            method=request.method.decode("ascii", "replace"),
            target=policy.target(request.uri),
            request_headers=policy.headers(
                (name, value)
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ),
        )

    def request_refused(
        self, peer: str, method: bytes, path: bytes, status: int, request_id: str, sent: int
    ) -> None:
        """
        Audit a request the channel answered while parsing it (400, 413, 414, 431), before a
        request object existed or was processed.

        :param peer: the client's address (the socket's: headers were not trusted yet).
        :param method: the method, when the request line was read (else ``b""``).
        :param path: the target without its query string, when read (else ``b""``).
        :param status: the status sent.
        :param request_id: the response's ``X-Request-ID``.
        :param sent: the body bytes sent.
        """
        if self.audit is None:
            return
        now = self.clock.seconds()
        record = AuditRecord(
            started=now,
            correlation_id=request_id,
            client_ip=peer,
            user=None,
            bucket=None,
            object_key=None,
            http_method=method.decode("ascii", "replace"),
            request_path=path.decode("utf-8", "replace"),
            response_status=status,
            response_size_bytes=sent,
            duration_ms=0.0,
            cache_status=None,
            user_agent=None,
            referer=None,
        )
        self.audit.emit(record)

    def log(self, request: http.Request) -> None:
        """Called by twisted.web when a request finished: account for it."""
        ended: ProxyRequest = request  # type: ignore[assignment]
        self.request_ended(ended, aborted=False)

    @property
    def connection_count(self) -> int:
        """Client connections open (idle keep-alive ones included)."""
        return len(self._channels)

    def channel_opened(self, channel: LimitedHTTPChannel) -> None:
        """
        Track a client connection until it is closed.

        :param channel: the channel whose connection was made.
        """
        self._channels.add(channel)

    def channel_closed(self, channel: LimitedHTTPChannel) -> None:
        """
        Stop tracking a client connection (its ``connectionLost`` ran).

        :param channel: the channel whose connection is gone.
        """
        self._channels.discard(channel)
        if not self._channels:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self) -> int:
        """
        Close idle connections now and every other one after its current response.

        Safe to call more than once (again after the listener stopped, for connections
        accepted in between).

        :returns: how many connections were idle and are closing now.
        """
        return sum(channel.close_when_done() for channel in list(self._channels))

    def wait_closed(self) -> Deferred[None]:
        """
        :returns: a Deferred that fires once every client connection has flushed and closed.
        """
        if not self._channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    def abort_connections(self) -> int:
        """
        Abort every connection still open, dropping what its buffers hold.

        :returns: how many connections were aborted.
        """
        channels = list(self._channels)
        for channel in channels:
            transport: Any = channel.transport
            transport.abortConnection()
        return len(channels)
