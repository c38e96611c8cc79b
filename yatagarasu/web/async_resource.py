"""
The base of the proxy's leaf resources: ``render`` runs :meth:`AsyncResource.handle`, which
answers at once or returns a Deferred; the work is cancelled when the client goes away, and
every failure is answered by one mapper (:func:`answer_failure`) with the JSON error shape.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from yatagarasu.errors import HTTPError
from yatagarasu.http.methods import READ_METHODS
from yatagarasu.web.responses import write_error
from yatagarasu.web.site import ProxyRequest
from yatagarasu.web.streaming import BodyStalled, ClientStalled

log = Logger()


class AsyncResource(Resource):
    """
    A leaf whose answer may take time.

    Subclasses implement :meth:`handle`. ``render`` always returns ``NOT_DONE_YET``, so
    ``render_HEAD`` and twisted.web's HEAD-via-GET fallback never come into play: a subclass
    answers HEAD itself (without a body).

    :cvar cancel_on_disconnect: cancel the Deferred :meth:`handle` returned when the client
        goes away (``False`` for work that must complete once asked, such as a purge).
    """

    isLeaf = True
    cancel_on_disconnect = True

    def render(self, request: Request) -> Any:
        proxy_request: ProxyRequest = request  # type: ignore[assignment]
        try:
            handling = self.handle(proxy_request)
        except Exception:
            answer_failure(Failure(), proxy_request)
            return NOT_DONE_YET
        if handling is not None:  # (None: answered already)
            if self.cancel_on_disconnect and not request.finished:
                request.notifyFinish().addErrback(lambda _: handling.cancel())
            handling.addErrback(answer_failure, proxy_request)
        return NOT_DONE_YET

    def handle(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        Answer ``request``.

        :param request: the request (``request.finish()`` is the handler's job).
        :returns: ``None`` when answered already, else a Deferred that fires when done.
        :raises HTTPError: to refuse the request (answered with the JSON error).
        """
        raise NotImplementedError


def answer_failure(failure: Failure, request: ProxyRequest) -> None:
    """
    Answer a failed request: the JSON error when nothing was sent yet, else abort the
    connection (a client must never take a truncated body for a whole one).

    :param failure: what went wrong (``HTTPError``: its status; S3 stalls: 504; S3 closing
        the connection: 502; anything else: 500, logged with its traceback).
    :param request: the request it happened to.
    """
    try:
        _answer(failure, request)
    finally:
        # Drop the traceback frames: they would keep the request in a reference cycle.
        failure.cleanFailure()


def _answer(failure: Failure, request: ProxyRequest) -> None:
    if request.finished or request._disconnected:
        if not failure.check(CancelledError, BodyStalled, ClientStalled):
            log.failure("after the client went away", failure, request_id=request.request_id)
        return
    if request.startedWriting:
        log.warn(
            "aborting response of {bucket}/{key}: {reason}",
            bucket=request.bucket,
            key=request.object_key,
            reason=failure.getErrorMessage(),
            request_id=request.request_id,
        )
        transport: Any = request.channel.transport
        transport.abortConnection()
        return
    if failure.check(HTTPError):
        error = cast(HTTPError, failure.value)
    elif failure.check(BodyStalled):
        error = HTTPError(504, failure.getErrorMessage())
    elif failure.check(ResponseFailed, ConnectionLost, ConnectionDone):
        error = HTTPError(502, "S3 closed the connection before sending the body")
    else:
        log.failure("unexpected error", failure, request_id=request.request_id)
        error = HTTPError(500, "internal error")
    write_error(request, error, request.request_id)


class ReadOnlyResource(AsyncResource):
    """A leaf that answers GET and HEAD at once; other methods get the JSON 405 with ``Allow``."""

    def handle(self, request: ProxyRequest) -> None:
        if request.method not in READ_METHODS:
            method = request.method.decode("ascii", "replace")
            raise HTTPError(
                405, f"method {method} is not allowed here", headers=[("Allow", "GET, HEAD")]
            )
        self.answer(request)

    def answer(self, request: ProxyRequest) -> None:
        """
        Answer a GET or HEAD (a HEAD gets the same headers and no body) and finish it.

        :param request: the request.
        """
        raise NotImplementedError
