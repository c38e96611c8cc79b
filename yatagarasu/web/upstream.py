"""Passing S3 responses to clients: which headers go where, errors, streamed bodies."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.server import Request

from yatagarasu.http.conditionals import Conditions
from yatagarasu.http.fields import first_header
from yatagarasu.observability.timings import RequestTimings
from yatagarasu.s3.errors import upstream_error
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.web.streaming import BodyRelay, StreamTimeouts

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

_PASSED = frozenset(PASSED_RESPONSE_HEADERS)

# Response headers kept with a cached object and replayed on hits (lengths and ranges are
# recomputed for each answer).
STORED_RESPONSE_HEADERS = tuple(
    name for name in PASSED_RESPONSE_HEADERS if name not in (b"content-length", b"content-range")
)


class Discard(Protocol):
    """Consume a body nobody needs, so the connection can go back to the pool."""


async def fetch_object(
    client: ReplicaSet,
    method: bytes,
    key: str,
    conditions: Conditions,
    timings: RequestTimings | None = None,
) -> IResponse:
    """
    Fetch an object with the client's well-formed conditions (nothing else of the client's
    request goes to S3).

    S3 does not evaluate ``If-Range``: when it answers ``206`` with a validator that does not
    match, that answer is dropped and the whole representation fetched, as RFC 9110 §13.1.5
    wants.

    :param client: the bucket's upstreams (replicas behind circuit breakers).
    :param method: ``b"GET"`` or ``b"HEAD"``.
    :param key: the object key.
    :param conditions: the request's parsed conditional and range fields.
    :param timings: the client request's timing record, when measured.
    :returns: S3's response (body not read).
    :raises UpstreamError: when S3 could not be reached or kept failing.
    """
    response = await client.fetch(method, key, conditions.upstream_headers(), timings)
    if response.code == 206 and not conditions.if_range_holds(
        first_header(response.headers, b"etag"), first_header(response.headers, b"last-modified")
    ):
        response.deliverBody(Discard())
        headers = conditions.without_range().upstream_headers()
        response = await client.fetch(method, key, headers, timings)
    return response


async def relay_response(
    request: Request,
    response: IResponse,
    clock: IReactorTime,
    timeouts: StreamTimeouts,
    *,
    status: int | None = None,
) -> None:
    """
    Answer ``request`` with an S3 response as it is: status, passed headers, streamed body.

    :param request: the client request.
    :param response: S3's answer (below 500: retries are the client's business).
    :param clock: time, for the idle timeout.
    :param timeouts: how long S3 (idle) and the client (send) may stall.
    :param status: the status to send for S3's ``200`` instead (a ``not_found_document``
        served as a 404).
    :raises HTTPError: for S3 4xx answers (the caller writes the JSON error).
    """
    if response.code >= 400:
        raise await upstream_error(response, clock, timeouts.idle_seconds)
    request.setResponseCode(
        status if status is not None and response.code == 200 else response.code
    )
    passed = request.responseHeaders
    for name, values in response.headers.getAllRawHeaders():  # one pass over S3's few fields
        if name.lower() in _PASSED and values:
            passed.setRawHeaders(name, values)
    if response.code == 304:
        request.responseHeaders.removeHeader(b"content-length")
    elif response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
        # The S3 client (as twisted.web's) keeps Content-Length out of response.headers (but
        # for HEAD).
        request.setHeader(b"content-length", b"%d" % response.length)
    if request.method == b"HEAD" or response.code == 304:
        response.deliverBody(Discard())
        request.finish()
        return
    relay = BodyRelay(request, clock, timeouts)
    response.deliverBody(relay)
    await relay.done
    request.finish()
