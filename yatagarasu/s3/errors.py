"""
S3's error answers: the bounded read of an XML error document, its ``<Code>`` and
``<Message>``, and the proxy's JSON error (:class:`yatagarasu.errors.HTTPError`) for it.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from yatagarasu.errors import HTTPError
from yatagarasu.http.fields import first_header

_S3_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,512})</Message>")
_S3_OBJECT_SIZE = re.compile(rb"<ActualObjectSize>([0-9]{1,19})</ActualObjectSize>")

_S3_STATUS_MESSAGES = {
    400: "S3 rejected the request",
    403: "access denied by S3",
    404: "object not found",
    412: "precondition failed",
    416: "requested range not satisfiable",
}


class BoundedCollector(Protocol):
    """
    Collect a small body (an S3 error document) up to ``limit`` bytes, then stop reading.

    :ivar done: fires with the bytes collected (possibly truncated at ``limit``).
    """

    def __init__(self, limit: int = 64 * 1024) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        room = self._limit - self._size
        if room > 0:
            self._chunks.append(data[:room])
            self._size += min(room, len(data))
        if self._size >= self._limit:
            self._stop()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(b"".join(self._chunks))

    def _stop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


def s3_error_code(body: bytes) -> str | None:
    """
    Extract ``<Code>`` from an S3 XML error document.

    :param body: the (possibly truncated) error body.
    :returns: the code (``NoSuchKey``), or ``None`` when there is none.
    """
    match = _S3_CODE.search(body)
    return match.group(1).decode("utf-8", "replace") if match else None


class S3ErrorDocument(NamedTuple):
    """
    What an S3 XML error body says (each part ``None`` when it says nothing about it).

    :ivar code: ``<Code>`` (``NoSuchKey``).
    :ivar message: ``<Message>``.
    :ivar object_size: ``<ActualObjectSize>``, sent with ``InvalidRange`` (416).
    """

    code: str | None
    message: str | None
    object_size: int | None


async def read_s3_error(
    response: IResponse, clock: IReactorTime, timeout: float
) -> S3ErrorDocument:
    """
    Read a bounded S3 error body and return what it says.

    :param response: an upstream response whose body has not been delivered yet.
    :param clock: time source.
    :param timeout: give up reading after this many seconds (the body is then ignored).
    :returns: its code, message and object size.
    """
    collector = BoundedCollector()
    response.deliverBody(collector)
    reading = collector.done
    reading.addTimeout(timeout, clock, onTimeoutCancel=lambda _result, _timeout: b"")
    body = await reading
    message = _S3_MESSAGE.search(body)
    size = _S3_OBJECT_SIZE.search(body)
    return S3ErrorDocument(
        s3_error_code(body),
        message.group(1).decode("utf-8", "replace") if message else None,
        int(size.group(1)) if size else None,
    )


def precondition_failed() -> HTTPError:
    """:returns: the 412 answer, the same for cached and uncached objects."""
    return HTTPError(412, _S3_STATUS_MESSAGES[412])


def range_not_satisfiable(total: int | None) -> HTTPError:
    """
    :param total: the representation's length, when known.
    :returns: the 416 answer, the same for cached and uncached objects.
    """
    headers = [("Content-Range", f"bytes */{total}")] if total is not None else []
    return HTTPError(416, _S3_STATUS_MESSAGES[416], headers=headers)


async def upstream_error(response: IResponse, clock: IReactorTime, timeout: float) -> HTTPError:
    """
    :param response: an S3 answer with status >= 400 (body not read yet).
    :param clock: time source.
    :param timeout: how long the error body may take to arrive.
    :returns: our JSON error for it: same status, ``s3_code`` from S3's XML; a 412 or 416 is
        the same answer the cache gives (:func:`precondition_failed`,
        :func:`range_not_satisfiable` with the length S3 reported).
    """
    code, message, object_size = await read_s3_error(response, clock, timeout)
    if response.code == 412:
        return precondition_failed()
    if response.code == 416:
        content_range = first_header(response.headers, b"content-range")
        total = _unsatisfied_length(content_range) if content_range else object_size
        return range_not_satisfiable(total)
    text = message or _S3_STATUS_MESSAGES.get(response.code, f"S3 answered {response.code}")
    return HTTPError(response.code, text, s3_code=code)


def _unsatisfied_length(content_range: bytes) -> int | None:
    """:returns: the length in a ``bytes */<length>`` value, or ``None``."""
    unit, _, length = content_range.partition(b"*/")
    well_formed = unit.strip() == b"bytes" and length.isdigit() and len(length) <= 19
    return int(length) if well_formed else None
