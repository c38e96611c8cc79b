"""
The root of the Resource tree: the proxy's own routes, then bucket prefixes.

``/health`` and ``/ready`` are static children. Every other path goes to the proxy's own
subtree (the admin API at ``server.admin_path_prefix``) or the bucket whose prefix is the
longest match at a segment boundary (``/products`` does not match ``/products-old/x``); no
match is a JSON 404.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from yatagarasu.errors import HTTPError
from yatagarasu.web.async_resource import AsyncResource
from yatagarasu.web.site import ProxyRequest


class ErrorResource(AsyncResource):
    """Answer every method with one JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self._status = status
        self._message = message

    def handle(self, request: ProxyRequest) -> None:
        raise HTTPError(self._status, self._message)


NOT_FOUND = ErrorResource(404, "no bucket is configured for this path")


class RootResource(Resource):
    """
    Route to the proxy's own resources and to bucket resources.

    :param exact: the proxy's leaf routes that answer only their exact path
        (``{b"health": ...}`` serves ``/health``, not ``/health/x``).
    :param subtrees: the proxy's routes that own everything below their prefix segments
        (``{("admin",): admin}``); on a tie with a bucket prefix, the subtree wins.
    :param buckets: ``(prefix segments, resource)`` for every bucket.
    :param not_found: what answers a path nothing is routed to.
    """

    def __init__(
        self,
        exact: Mapping[bytes, IResource],
        subtrees: Mapping[tuple[str, ...], IResource],
        buckets: Sequence[tuple[tuple[str, ...], IResource]],
        not_found: IResource = NOT_FOUND,
    ) -> None:
        super().__init__()
        self._exact = dict(exact)
        self._not_found = not_found
        # sorted() is stable: subtrees come first among prefixes of the same length.
        self._routes = sorted(
            (
                (tuple(s.encode("utf-8") for s in prefix), resource)
                for prefix, resource in [*subtrees.items(), *buckets]
            ),
            key=lambda route: len(route[0]),
            reverse=True,
        )

    def getChild(self, path: bytes, request: Request) -> IResource:
        postpath = request.postpath
        prepath = request.prepath
        assert postpath is not None and prepath is not None
        exact = self._exact.get(path)
        if exact is not None and (not postpath or postpath == [b""]):
            return exact
        segments = [path, *postpath]
        for prefix, resource in self._routes:
            if tuple(segments[: len(prefix)]) == prefix:
                if prefix:
                    consumed = len(prefix) - 1
                    prepath.extend(postpath[:consumed])
                    del postpath[:consumed]
                else:
                    postpath.insert(0, prepath.pop())
                return resource
        return self._not_found

    def render(self, request: Request) -> Any:
        # Only reached for "/" itself when no bucket is mounted at the root.
        return self._not_found.render(request)
