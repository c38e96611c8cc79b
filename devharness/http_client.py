"""One HTTP/1.1 request, fully read, with the path sent exactly as given (tests and the demo)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpResponse:
    """A fully read HTTP response (for tests and the demo; not for large bodies)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """
        :param name: header name, any case.
        :returns: the first value of that header, or ``None``.
        """
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """
        :param name: header name, any case.
        :returns: every value of that header, in order.
        """
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def json(self) -> Any:
        """:returns: the body decoded as JSON."""
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """
    Send one HTTP/1.1 request and read the whole response.

    The path is sent exactly as given (no normalisation, no re-quoting), so tests can send
    ``%2e%2e`` and friends. ``http.client`` is used rather than urllib so that no proxy
    environment variable, redirect handling or error raising gets in the way.

    :param method: HTTP method.
    :param url: ``http://host:port/path?query``.
    :param headers: request headers (mapping or list of pairs, for repeated headers).
    :param body: request body.
    :param timeout: socket timeout in seconds.
    :returns: the response.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http://host:port/... URLs are supported, got {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        for key, value in pairs:
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, resp.reason, list(resp.getheaders()), data)
    finally:
        conn.close()
