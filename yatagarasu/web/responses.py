"""JSON responses built by the proxy itself, with the one error shape used everywhere."""

from __future__ import annotations

import json

from twisted.web.server import Request

from yatagarasu.errors import HTTPError
from yatagarasu.http.status import reason_phrase


def error_body(status: int, message: str, request_id: str, s3_code: str | None = None) -> bytes:
    """
    Serialise the JSON error document.

    :param status: the HTTP status code.
    :param message: what happened (no secrets).
    :param request_id: the request's id (also in ``X-Request-ID``).
    :param s3_code: the S3 error code, when the error came from S3.
    :returns: ``{"error", "message", "status", "request_id"[, "s3_code"]}`` as UTF-8 JSON;
        ``error`` is the status's RFC 9110 reason phrase, as in the status line.
    """
    document: dict[str, object] = {
        "error": reason_phrase(status),
        "message": message,
        "status": status,
        "request_id": request_id,
    }
    if s3_code is not None:
        document["s3_code"] = s3_code
    return json.dumps(document).encode("utf-8")


def write_error(request: Request, error: HTTPError, request_id: str) -> None:
    """
    Answer ``request`` with ``error`` as JSON and finish it.

    Response headers already set (request id, CORS) are kept; headers copied from an upstream
    response are not, because the error replaces that response.

    :param request: the request to answer; it must not have started writing.
    :param error: the error to report.
    :param request_id: the request's id.
    """
    body = error_body(error.status, error.message, request_id, error.s3_code)
    request.setResponseCode(error.status)
    for stale in (
        b"etag",
        b"last-modified",
        b"content-range",
        b"content-encoding",
        b"content-disposition",
        b"cache-control",
        b"accept-ranges",
        b"expires",
        b"content-language",
    ):
        request.responseHeaders.removeHeader(stale)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    for name, value in error.headers:
        request.setHeader(name, value)
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def write_json(request: Request, status: int, document: object) -> bytes:
    """
    Answer ``request`` with a JSON document (``Cache-Control: no-store``) and finish it.

    :param request: the request to answer.
    :param status: the HTTP status code.
    :param document: anything ``json.dumps`` accepts.
    :returns: the body bytes (already written unless the request is a HEAD).
    """
    body = json.dumps(document).encode("utf-8")
    request.setHeader(b"cache-control", b"no-store")
    write_body(request, status, b"application/json", body)
    return body


def write_body(request: Request, status: int, content_type: bytes, body: bytes) -> None:
    """
    Answer ``request`` with a complete body (none for HEAD, same headers) and finish it.

    :param request: the request to answer.
    :param status: the HTTP status code.
    :param content_type: the ``Content-Type``.
    :param body: the body.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
