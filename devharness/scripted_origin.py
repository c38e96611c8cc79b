"""
An S3 stand-in of the test's own on 127.0.0.1 (anonymous, path style): each GET gets the next
answer of a script (status, delay before the head, body), and every request's headers are
recorded. For what moto cannot do on demand: 500 then 200, a stalled first byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devharness.ports import LOOPBACK


@dataclass(frozen=True)
class Answer:
    """
    :ivar status: the status sent.
    :ivar body: the body.
    :ivar delay: seconds waited before the head is sent (a slow S3).
    """

    status: int = 200
    body: bytes = b"hello"
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request the origin got."""

    method: str
    path: str
    headers: dict[str, str]


class ScriptedOrigin:
    """
    :param script: the answers, in order; the last one is repeated once they run out.
    """

    def __init__(self, script: Sequence[Answer]) -> None:
        self.received: list[Received] = []
        self._script = list(script)
        self._lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, with_body: bool) -> None:
                with origin._lock:
                    origin.received.append(
                        Received(
                            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
                        )
                    )
                    answer = origin._script.pop(0) if len(origin._script) > 1 else origin._script[0]
                if answer.delay:
                    time.sleep(answer.delay)
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(answer.body)))
                self.send_header("ETag", '"scripted"')
                self.end_headers()
                if with_body:
                    self.wfile.write(answer.body)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        """:returns: ``http://127.0.0.1:<port>`` (a bucket's ``s3.endpoint``)."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> ScriptedOrigin:
        """:returns: itself, serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._thread.join(10)
        self._server.server_close()
