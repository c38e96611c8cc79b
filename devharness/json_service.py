"""
A small JSON-over-HTTP service on 127.0.0.1 for the tests' own fakes of policy services (OPA's
data API, OpenFGA's Check) and credential endpoints (EC2 instance metadata, ECS): it records
every request and answers with a function of the test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devharness.ports import LOOPBACK


@dataclass(frozen=True)
class JsonCall:
    """One request the service received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


#: ``answer(call) -> (status, document)``; a ``str`` document is sent as ``text/plain``
Answerer = Callable[[JsonCall], tuple[int, Any]]


class JsonService:
    """
    A threaded HTTP server answering POSTed JSON.

    :param answer: what to answer each call (a POST whose body is not JSON is answered 400
        without it; a GET or PUT is recorded with ``body`` ``None``).
    :param port: the port to listen on (default: a free one).
    :ivar calls: every request received, in order (read them after the proxy answered).
    """

    def __init__(self, answer: Answerer, port: int = 0) -> None:
        self.answer = answer
        self.calls: list[JsonCall] = []
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the proxy's pool reuses connections

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"code": "bad_request", "message": "body is not JSON"})
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._answer(JsonCall("POST", self.path, headers, body))

            def do_GET(self) -> None:
                self._answer(JsonCall("GET", self.path, self._headers(), None))

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(JsonCall("PUT", self.path, self._headers(), None))

            def _headers(self) -> dict[str, str]:
                return {k.lower(): v for k, v in self.headers.items()}

            def _answer(self, call: JsonCall) -> None:
                with service._lock:
                    service.calls.append(call)
                status, document = service.answer(call)
                self._send(status, document)

            def _send(self, status: int, document: Any) -> None:
                text = isinstance(document, str)
                payload = document.encode() if text else json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def url(self) -> str:
        """:returns: ``http://127.0.0.1:<port>``."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> JsonService:
        """:returns: itself, serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (later connections are refused)."""
        self._server.shutdown()
        self._thread.join(10)
        self._server.server_close()


@contextmanager
def json_service(answer: Answerer, port: int = 0) -> Iterator[JsonService]:
    """:returns: a started :class:`JsonService` (on ``port``, default a free one), stopped on
    exit."""
    service = JsonService(answer, port).start()
    try:
        yield service
    finally:
        service.stop()
