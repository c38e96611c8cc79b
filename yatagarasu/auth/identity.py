"""Who made a request, and the ways authentication can fail."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from yatagarasu.errors import HTTPError


@dataclass(frozen=True)
class Identity:
    """
    An authenticated client.

    :ivar subject: who (JWT ``sub``), or ``None`` when the scheme has no notion of it.
    :ivar claims: everything the scheme learned (JWT claims), for rules and later stages.
    :ivar scheme: the name of the scheme that vouched for it.
    """

    subject: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)
    scheme: str = ""


class AuthenticationRequired(HTTPError):
    """No credentials at all: 401 with a ``Bearer`` challenge."""

    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(401, message, headers=[("WWW-Authenticate", 'Bearer realm="yatagarasu"')])


class InvalidCredentials(HTTPError):
    """Credentials present but not acceptable (bad signature, expired...): 401 ``invalid_token``."""

    def __init__(self, message: str = "invalid token") -> None:
        super().__init__(
            401,
            message,
            headers=[("WWW-Authenticate", 'Bearer realm="yatagarasu", error="invalid_token"')],
        )


class Forbidden(HTTPError):
    """Valid credentials that are not allowed here (claims rules), or a blocked address: 403."""

    def __init__(self, message: str = "forbidden") -> None:
        super().__init__(403, message)
