"""Baseline (b): a bare ``twisted.web`` resource returning a fixed 1 KiB body.

This is the ceiling for any Twisted HTTP server on this machine: one process, no
upstream, no logging, no per-request work beyond what ``twisted.web`` itself does.

Usage::

    .venv/bin/python bench/bare_resource.py --port 18081 [--size 1024]
"""

from __future__ import annotations

import argparse

from twisted.internet import endpoints, reactor
from twisted.web import resource, server


class Fixed(resource.Resource):
    """Answer every GET/HEAD on every path with the same body."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body
        self._length = str(len(body)).encode()

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"etag", b'"bench-fixed"')
        request.setHeader(b"content-length", self._length)
        return self._body

    def render_HEAD(self, request: server.Request) -> bytes:
        self.render_GET(request)
        return b""


class QuietSite(server.Site):
    """A ``Site`` without the per-request access-log line (formatted even with no observer)."""

    def log(self, request: server.Request) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--access-log", action="store_true", help="keep twisted.web's access-log formatting"
    )
    args = parser.parse_args()

    site_class = server.Site if args.access_log else QuietSite
    site = site_class(Fixed(b"x" * args.size))
    site.displayTracebacks = False
    ep = endpoints.TCP4ServerEndpoint(reactor, args.port, backlog=1024, interface=args.address)
    ep.listen(site)
    print(f"bare_resource listening on {args.address}:{args.port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
