"""
A scriptable S3 stand-in on 127.0.0.1 for chaos tests and benches: it answers every object GET
the way its current ``mode`` says (healthy, 503 SlowDown, 500, every other answer a 500, slow,
a body cut short) and can be stopped and started again on the same port (connection refused
in between). It does not check signatures: healthy replicas in tests are moto.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from devharness.ports import LOOPBACK, free_port

Mode = Literal["ok", "slowdown", "error", "flaky", "slow", "truncate"]

_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>'
)


class BrokenS3:
    """
    One scriptable upstream.

    :param body: the object every healthy answer carries.
    :param mode: how to answer (change it at any time with :attr:`mode`).
    :param delay: seconds a ``slow`` answer waits before its headers.
    :param truncate_at: bytes of the body a ``truncate`` answer sends before it closes.
    :ivar requests: ``(method, path)`` of every request received, in order.
    """

    def __init__(
        self,
        body: bytes = b"from the broken S3",
        *,
        mode: Mode = "ok",
        delay: float = 3.0,
        truncate_at: int = 1024,
    ) -> None:
        self.body = body
        self.mode: Mode = mode
        self.delay = delay
        self.truncate_at = truncate_at
        self.requests: list[tuple[str, str]] = []
        self.port = free_port()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def endpoint_url(self) -> str:
        """:returns: ``http://127.0.0.1:<port>``."""
        return f"http://{LOOPBACK}:{self.port}"

    def count(self, method: str = "GET") -> int:
        """:returns: how many ``method`` requests arrived so far."""
        with self._lock:
            return sum(1 for m, _ in self.requests if m == method)

    def start(self) -> BrokenS3:
        """Listen (again) on :attr:`port`; returns ``self``."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._connections.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tests look at :attr:`BrokenS3.requests`."""

            def do_GET(self) -> None:
                owner._answer(self, head=False)

            def do_HEAD(self) -> None:
                owner._answer(self, head=True)

        server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        # a short poll: stop() returns (and the port refuses) within ~10 ms
        self._thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """
        Stop listening and close the open (keep-alive) connections: new connections are
        refused until :meth:`start`.
        """
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _answer(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        with self._lock:
            self.requests.append((handler.command, handler.path))
            index = len(self.requests)
        mode = self.mode
        with contextlib.suppress(OSError):  # the proxy may have given up and closed
            if mode == "slowdown":
                self._error(handler, 503, b"SlowDown", b"Please reduce your request rate.")
            elif mode == "error" or (mode == "flaky" and index % 2 == 1):
                self._error(handler, 500, b"InternalError", b"We encountered an internal error.")
            else:
                if mode == "slow":
                    time.sleep(self.delay)
                self._object(handler, head=head, truncate=mode == "truncate")

    def _error(
        self, handler: BaseHTTPRequestHandler, status: int, code: bytes, text: bytes
    ) -> None:
        document = _ERROR % (code, text)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(document)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(document)

    def _object(self, handler: BaseHTTPRequestHandler, *, head: bool, truncate: bool) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(self.body)))
        handler.send_header("ETag", '"broken-s3-etag"')
        handler.send_header("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")
        handler.send_header("Cache-Control", "max-age=600")
        handler.end_headers()
        if head:
            return
        if truncate:
            handler.wfile.write(self.body[: self.truncate_at])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(
                socket.SHUT_RDWR
            )  # cut short: fewer bytes than Content-Length
            return
        handler.wfile.write(self.body)


@contextlib.contextmanager
def broken_s3(body: bytes = b"from the broken S3", **settings: object) -> Iterator[BrokenS3]:
    """
    A started :class:`BrokenS3`, stopped on exit.

    :param body: the object healthy answers carry.
    :param settings: ``mode``, ``delay``, ``truncate_at``.
    """
    server = BrokenS3(body, **settings).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
