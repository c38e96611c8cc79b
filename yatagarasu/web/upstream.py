"""Passing S3 responses to clients: which headers go where, errors, streamed bodies."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.server import Request

from yatagarasu.s3.errors import upstream_error
from yatagarasu.web.streaming import BodyRelay, StreamTimeouts

# Request headers passed on to S3 (everything else, tokens included, stays here).
FORWARDED_REQUEST_HEADERS = (
    b"range",
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"if-range",
)

# Response headers passed back from S3 (x-amz-* and the rest are dropped).
PASSED_RESPONSE_HEADERS = (
    b"content-type",
    b"content-length",
    b"content-range",
    b"content-encoding",
    b"content-disposition",
    b"content-language",
    b"etag",
    b"last-modified",
    b"cache-control",
    b"expires",
    b"accept-ranges",
)

# Response headers kept with a cached object and replayed on hits (lengths and ranges are
# recomputed for each answer).
STORED_RESPONSE_HEADERS = tuple(
    name for name in PASSED_RESPONSE_HEADERS if name not in (b"content-length", b"content-range")
)


class Discard(Protocol):
    """Consume a body nobody needs, so the connection can go back to the pool."""


def forwarded_headers(request: Request) -> Headers:
    """
    :param request: the client request.
    :returns: its range and conditional headers, to send to S3.
    """
    forwarded = Headers()
    for name in FORWARDED_REQUEST_HEADERS:
        values = request.requestHeaders.getRawHeaders(name)
        if values:
            forwarded.setRawHeaders(name, values)
    return forwarded


async def relay_response(
    request: Request, response: IResponse, clock: IReactorTime, timeouts: StreamTimeouts
) -> None:
    """
    Answer ``request`` with an S3 response as it is: status, passed headers, streamed body.

    :param request: the client request.
    :param response: S3's answer (below 500: retries are the client's business).
    :param clock: time, for the idle timeout.
    :param timeouts: how long S3 (idle) and the client (send) may stall.
    :raises HTTPError: for S3 4xx answers (the caller writes the JSON error).
    """
    if response.code >= 400:
        raise await upstream_error(response, clock, timeouts.idle_seconds)
    request.setResponseCode(response.code)
    upstream = response.headers
    for name in PASSED_RESPONSE_HEADERS:
        values = upstream.getRawHeaders(name)
        if values:
            request.responseHeaders.setRawHeaders(name, values)
    if response.code == 304:
        request.responseHeaders.removeHeader(b"content-length")
    elif response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
        # Twisted's client keeps Content-Length out of response.headers (except for HEAD).
        request.setHeader(b"content-length", b"%d" % response.length)
    if request.method == b"HEAD" or response.code == 304:
        response.deliverBody(Discard())
        request.finish()
        return
    relay = BodyRelay(request, clock, timeouts)
    response.deliverBody(relay)
    await relay.done
    request.finish()
