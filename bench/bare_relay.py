"""Baseline (c): a bare Twisted relay hop -- the floor cost of any Twisted HTTP proxy.

A ``twisted.web`` server whose only resource forwards each GET/HEAD to one upstream with
``twisted.web.client.Agent`` over a persistent ``HTTPConnectionPool`` and streams the body
back with ``Response.deliverBody``.  The upstream transport is registered as a *push
producer* on the client request, so a slow client pauses the upstream socket (backpressure)
instead of buffering the object in memory.  No signing, no routing, no caching, no logging.

Usage::

    .venv/bin/python bench/bare_relay.py --port 18082 --upstream http://127.0.0.1:18080
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

#: Response headers passed from upstream to the client (lower-case).
PASSED = (
    b"content-type",
    b"etag",
    b"last-modified",
    b"accept-ranges",
    b"cache-control",
    b"content-encoding",
    b"content-disposition",
    b"content-range",
)
#: Request headers passed from the client to upstream.
FORWARDED = (b"range", b"if-none-match", b"if-modified-since")


class BodyRelay(Protocol):
    """Write upstream body bytes to the client request, with backpressure."""

    def __init__(self, request: server.Request, recv_size: int | None = None) -> None:
        self.request = request
        self.clientGone = False
        self.recv_size = recv_size

    def connectionMade(self) -> None:
        upstream = getattr(self.transport, "_producer", None)  # None: body already complete
        if self.recv_size and upstream is not None:
            # recv() size of the upstream socket (FileDescriptor.bufferSize, default 64 KiB)
            upstream.bufferSize = self.recv_size
        # self.transport is the Agent's TransportProxyProducer (an IPushProducer):
        # the client connection pauses/resumes the upstream socket.
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self.clientGone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.clientGone:
            return
        self.request.unregisterProducer()
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.request.finish()
        else:
            # Body failed midway: abort, never a truncated response that looks complete.
            self.request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def stop(self) -> None:
        """The client went away: drop the upstream connection (it is not reusable)."""
        self.clientGone = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class Relay(resource.Resource):
    isLeaf = True

    def __init__(
        self,
        agent: Agent,
        upstream: bytes,
        buffer_size: int | None = None,
        sndbuf: int | None = None,
        recv_size: int | None = None,
    ) -> None:
        super().__init__()
        self._agent = agent
        self._upstream = upstream
        self._buffer_size = buffer_size
        self._sndbuf = sndbuf
        self._recv_size = recv_size

    def render_GET(self, request: server.Request) -> Any:
        return self._relay(request, b"GET")

    def render_HEAD(self, request: server.Request) -> Any:
        return self._relay(request, b"HEAD")

    def _relay(self, request: server.Request, method: bytes) -> Any:
        client: Any = request.channel.transport  # type: ignore[union-attr]
        if self._buffer_size:
            # write-buffer level at which the client transport pauses its producer
            client.bufferSize = self._buffer_size
        if self._sndbuf:
            client.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
        headers = Headers()
        for name in FORWARDED:
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        d: Deferred[IResponse] = self._agent.request(method, self._upstream + request.uri, headers)
        body: list[BodyRelay] = []

        def onResponse(response: IResponse) -> None:
            request.setResponseCode(response.code)
            for name in PASSED:
                values = response.headers.getRawHeaders(name)
                if values:
                    request.responseHeaders.setRawHeaders(name, values)
            # Agent moves Content-Length (a connection-control header) out of
            # response.headers into response.length; without this we would answer chunked.
            # (For HEAD, Agent keeps Content-Length in response.headers and length is 0.)
            if method == b"HEAD":
                values = response.headers.getRawHeaders(b"content-length")
                if values:
                    request.setHeader(b"content-length", values[0])
            elif isinstance(response.length, int):
                request.setHeader(b"content-length", b"%d" % response.length)
            relay = BodyRelay(request, self._recv_size)
            body.append(relay)
            response.deliverBody(relay)

        def onError(failure: Failure) -> None:
            if request.finished or request._disconnected:
                return
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"bad gateway\n")
            request.finish()

        def onClientGone(_: object) -> None:
            if body:
                body[0].stop()
            else:
                d.cancel()

        d.addCallbacks(onResponse, onError)
        request.notifyFinish().addErrback(onClientGone)
        return server.NOT_DONE_YET


@implementer(IAgentEndpointFactory)
class CachedEndpointFactory:
    """One endpoint per (scheme, host, port), reused for every request.

    Agent's default factory builds a new ``HostnameEndpoint`` per request, and its
    constructor IDNA-encodes the host name every time (~10 % of the relay's Python time).
    http only (an https endpoint would wrap this one with ``wrapClientTLS``).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._cache: dict[tuple[bytes, bytes, int], HostnameEndpoint] = {}

    def endpointForURI(self, uri: URI) -> HostnameEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port)
            self._cache[key] = endpoint
        return endpoint


class QuietSite(server.Site):
    """A ``Site`` without the per-request access-log line."""

    def log(self, request: server.Request) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:18080")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=64,
        help="HTTPConnectionPool.maxPersistentPerHost (Twisted's default is 2)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="keep twisted.web's access-log formatting"
    )
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="client transport write-buffer bytes before it pauses upstream (default 64 KiB)",
    )
    parser.add_argument(
        "--recv-size", type=int, default=None, help="upstream recv() size (default 64 KiB)"
    )
    parser.add_argument(
        "--sndbuf", type=int, default=None, help="SO_SNDBUF for client sockets (caps kernel queue)"
    )
    parser.add_argument(
        "--cache-endpoint",
        action="store_true",
        help="reuse one client endpoint per origin instead of Agent's per-request one",
    )
    args = parser.parse_args()

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = args.pool_size
    if args.cache_endpoint:
        agent = Agent.usingEndpointFactory(reactor, CachedEndpointFactory(reactor), pool=pool)
    else:
        agent = Agent(reactor, pool=pool)
    site_class = server.Site if args.access_log else QuietSite
    site = site_class(
        Relay(
            agent, args.upstream.rstrip("/").encode(), args.buffer_size, args.sndbuf, args.recv_size
        )
    )
    site.displayTracebacks = False
    ep = endpoints.TCP4ServerEndpoint(reactor, args.port, backlog=1024, interface=args.address)
    ep.listen(site)
    print(f"bare_relay listening on {args.address}:{args.port} -> {args.upstream}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
