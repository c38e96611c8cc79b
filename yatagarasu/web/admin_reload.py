"""
``POST /admin/reload``: reload the configuration file, behind the admin API's JWT check.

The route only calls what it is given (the process's reloader, injected by the composition
root): it answers 200 with the reloader's document, or the JSON error it raises (400 for an
invalid configuration, 409 while another reload runs or during a drain).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from yatagarasu.errors import HTTPError
from yatagarasu.web.admin import AdminHandler
from yatagarasu.web.site import ProxyRequest

#: Reloads the configuration; returns the success document or raises :class:`HTTPError`.
ReloadHandler = Callable[[], Awaitable[dict[str, Any]]]


def reload_admin_routes(reload: ReloadHandler) -> dict[tuple[bytes, str], AdminHandler]:
    """
    :param reload: what a ``POST /admin/reload`` runs.
    :returns: the ``/admin/reload`` route.
    """

    async def post(request: ProxyRequest, segments: list[str]) -> tuple[int, Any]:
        if segments:
            raise HTTPError(404, "no such admin route")
        return 200, await reload()

    return {(b"POST", "reload"): post}
