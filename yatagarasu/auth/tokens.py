"""Where a token is looked for in a request (``token_sources``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from twisted.web.iweb import IRequest

from yatagarasu.config.typed import join
from yatagarasu.errors import ConfigError


@dataclass(frozen=True)
class TokenSource:
    """
    One place to look for a token, tried in configured order.

    ``bearer`` (alias ``bearer_header``): ``Authorization: Bearer <token>`` (scheme name
    case-insensitive). ``header``: the header ``name``, minus ``prefix`` when given.
    ``query``: the query parameter ``name``.
    """

    type: Literal["bearer", "bearer_header", "header", "query"] = "bearer"
    name: str | None = None
    prefix: str | None = None

    def check(self, path: str) -> None:
        if self.type in ("header", "query") and not self.name:
            raise ConfigError(join(path, "name"), f"a {self.type} token source needs a name")
        if self.type in ("bearer", "bearer_header") and self.name not in (None, "Authorization"):
            raise ConfigError(join(path, "name"), "bearer tokens are read from Authorization")

    def extract(self, request: IRequest) -> str | None:
        """
        :param request: the request.
        :returns: the token found here, or ``None``.
        """
        if self.type == "query":
            assert self.name is not None
            values = request.args.get(self.name.encode("utf-8")) if request.args else None
            return values[0].decode("utf-8", "replace") if values else None
        header = b"authorization" if self.type in ("bearer", "bearer_header") else None
        raw = request.getHeader(header or (self.name or "").encode("latin-1"))
        if raw is None:
            return None
        value = raw.decode("latin-1").strip() if isinstance(raw, bytes) else str(raw).strip()
        if header is not None:
            scheme, _, token = value.partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
        if self.prefix:
            if not value.startswith(self.prefix):
                return None
            value = value[len(self.prefix) :].strip()
        return value or None


def find_token(sources: tuple[TokenSource, ...], request: IRequest) -> str | None:
    """
    :param sources: the configured sources, in order.
    :param request: the request.
    :returns: the first token found, or ``None``.
    """
    for source in sources:
        token = source.extract(request)
        if token:
            return token
    return None
