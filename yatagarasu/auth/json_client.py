"""
A small JSON-over-HTTP client for policy services (OPA, OpenFGA): one POST, one bounded JSON
answer, within a time limit measured on the injected clock, on a persistent connection pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent, RequestTransmissionFailed, _WrapperException
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from yatagarasu import __version__
from yatagarasu.http.outgoing import BytesBody, QuietPool

#: the largest answer read from a policy service
MAX_ANSWER_BYTES = 64 * 1024

_USER_AGENT = f"yatagarasu/{__version__}".encode()


class PolicyServiceError(Exception):
    """The policy service gave no usable answer (the message says why; it holds no secret)."""


class _BoundedBody(Protocol):
    """Collects a response body up to a limit; beyond it, the connection is aborted."""

    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self._done = done
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(PolicyServiceError(f"answer larger than {self._limit} bytes"))
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(ResponseDone())
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(PolicyServiceError(f"answer cut short ({reason.getErrorMessage()})"))


def _read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    protocol: _BoundedBody

    def cancel(d: Deferred[bytes]) -> None:
        transport = protocol.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]
        if not d.called:
            d.errback(CancelledError())

    done: Deferred[bytes] = Deferred(cancel)
    protocol = _BoundedBody(done, limit)
    response.deliverBody(protocol)
    return done


def _raise_if_cancelled(error: Exception) -> None:
    """:raises CancelledError: when twisted.web wrapped a cancellation (the caller's) in it."""
    if isinstance(error, _WrapperException) and any(r.check(CancelledError) for r in error.reasons):
        raise CancelledError() from None


def _why(error: Exception) -> str:
    reasons = error.reasons if isinstance(error, _WrapperException) else []
    return f" ({', '.join(r.getErrorMessage() for r in reasons)})" if reasons else ""


class JsonClient:
    """
    POST JSON documents to one policy service and read its JSON answers.

    :param reactor: time and TCP.
    :param timeout_seconds: the whole exchange (connect, send, answer read) must end within it.
    :param agent: the HTTP agent (tests); default: an ``Agent`` on a persistent pool of its own.
    """

    def __init__(
        self, reactor: IReactorTime, timeout_seconds: float, *, agent: IAgent | None = None
    ) -> None:
        self._clock = reactor
        self._timeout = timeout_seconds
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 10
            self._pool.cachedConnectionTimeout = 30
            agent = Agent(reactor, pool=self._pool, connectTimeout=timeout_seconds)
        self._agent = agent

    async def post(self, url: str, document: Any, headers: Mapping[bytes, bytes]) -> Any:
        """
        :param url: the absolute URL.
        :param document: what to send (JSON-serializable).
        :param headers: extra request headers (``Authorization``...).
        :returns: the decoded JSON answer of a 200 response.
        :raises PolicyServiceError: on a timeout, a connection failure, another status, an
            answer that is not JSON or is too large.
        :raises CancelledError: when the caller cancelled (its client went away).
        """
        exchange = Deferred.fromCoroutine(self._exchange(url, document, headers))
        exchange.addTimeout(self._timeout, self._clock)
        try:
            return await exchange
        except TimeoutError:
            raise PolicyServiceError(f"no answer within {self._timeout * 1000:g} ms") from None

    async def _exchange(self, url: str, document: Any, headers: Mapping[bytes, bytes]) -> Any:
        send = Headers({b"content-type": [b"application/json"], b"user-agent": [_USER_AGENT]})
        for name, value in headers.items():
            send.setRawHeaders(name, [value])
        # default=str: a claim a third-party scheme put in an identity may not be JSON
        text = json.dumps(document, separators=(",", ":"), sort_keys=True, default=str)
        body = BytesBody(text.encode())
        response = await self._send(url.encode("ascii"), send, body)
        raw = await _read_body(response, MAX_ANSWER_BYTES)
        if response.code != 200:
            raise PolicyServiceError(f"answered HTTP {response.code}")
        try:
            return json.loads(raw)
        except ValueError:
            raise PolicyServiceError("answer is not JSON") from None

    async def _send(self, url: bytes, headers: Headers, body: BytesBody) -> IResponse:
        """
        Send the request; once more when the connection closed before any answer (a pooled
        connection the service had just closed: twisted.web does not retry a POST itself, and
        a policy query is safe to repeat).
        """
        retried = False
        while True:
            try:
                return await self._agent.request(b"POST", url, headers, body)
            except (ResponseNeverReceived, RequestNotSent, RequestTransmissionFailed) as e:
                _raise_if_cancelled(e)
                if not retried:
                    retried = True
                    continue
                raise PolicyServiceError(f"connection closed before an answer{_why(e)}") from None
            except ResponseFailed as e:
                _raise_if_cancelled(e)
                raise PolicyServiceError(f"connection closed{_why(e)}") from None
            except neterror.ConnectingCancelledError:
                raise CancelledError() from None
            except (neterror.ConnectError, neterror.DNSLookupError, OSError) as e:
                raise PolicyServiceError(f"cannot connect ({e.__class__.__name__})") from None

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()
