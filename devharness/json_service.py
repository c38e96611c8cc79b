"""
A small JSON-over-HTTP service on 127.0.0.1 for the tests' own fakes of policy services (OPA's
data API, OpenFGA's Check): it records every request and answers with a function of the test.
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


#: ``answer(call) -> (status, document)``
Answerer = Callable[[JsonCall], tuple[int, Any]]


class JsonService:
    """
    A threaded HTTP server answering POSTed JSON.

    :param answer: what to answer each call (a non-JSON body is answered 400 without it).
    :ivar calls: every request received, in order (read them after the proxy answered).
    """

    def __init__(self, answer: Answerer) -> None:
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
                call = JsonCall("POST", self.path, headers, body)
                with service._lock:
                    service.calls.append(call)
                status, document = service.answer(call)
                self._send(status, document)

            def _send(self, status: int, document: Any) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
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
def json_service(answer: Answerer) -> Iterator[JsonService]:
    """:returns: a started :class:`JsonService`, stopped on exit."""
    service = JsonService(answer).start()
    try:
        yield service
    finally:
        service.stop()
