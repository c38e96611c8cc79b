"""
``/admin/...``: the admin API, guarded by JWT with ``admin_claims``. ``/admin`` is the default
of ``server.admin_path_prefix``; the composition root mounts this resource at that prefix.

With no admin auth configured (no ``jwt.admin_claims``, or ``jwt.enabled: false``) every
admin route answers 403. No token → 401, a token without the admin claims → 403. The routes
are the cache's (``/admin/cache/...``, see :mod:`yatagarasu.web.admin_cache`), present when
caching is configured, ``POST /admin/reload`` (:mod:`yatagarasu.web.admin_reload`) and, when a
bucket accepts signed links, ``POST /admin/sign`` (:mod:`yatagarasu.web.admin_sign`); anything
else is a JSON 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from yatagarasu.errors import HTTPError
from yatagarasu.interfaces import IAuthScheme
from yatagarasu.web.async_resource import AsyncResource
from yatagarasu.web.responses import write_json
from yatagarasu.web.site import ProxyRequest

#: An admin route: gets the request and the path segments after its name, returns
#: ``(status, document)``.
AdminHandler = Callable[[ProxyRequest, list[str]], Awaitable[tuple[int, Any]]]


class AdminResource(AsyncResource):
    """
    Authenticate, then dispatch on ``(method, first segment)``.

    :param scheme: the admin auth scheme, or ``None`` (admin API disabled: 403).
    :param routes: ``{(b"GET", "cache"): handler, ...}``: method and first path segment.
    """

    #: a purge asked for completes even when the client does not wait for the answer
    cancel_on_disconnect = False

    def __init__(
        self, scheme: IAuthScheme | None, routes: Mapping[tuple[bytes, str], AdminHandler]
    ) -> None:
        super().__init__()
        self._scheme = scheme
        self._routes = dict(routes)

    def handle(self, request: ProxyRequest) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handle(request))

    async def _handle(self, request: ProxyRequest) -> None:
        if self._scheme is None:
            raise HTTPError(
                403, "the admin API is disabled (it needs jwt.admin_claims, with jwt enabled)"
            )
        identity = await self._scheme.authenticate(request)
        request.subject = identity.subject
        segments = [s.decode("utf-8", "replace") for s in request.postpath or [] if s]
        name = segments[0] if segments else ""
        handler = self._routes.get((request.method, name))
        if handler is None:
            if any(route_name == name for _, route_name in self._routes):
                raise HTTPError(405, f"{request.method.decode()} is not allowed here")
            raise HTTPError(404, "no such admin route")
        status, document = await handler(request, segments[1:])
        if not request.finished and not request._disconnected:
            write_json(request, status, document)
