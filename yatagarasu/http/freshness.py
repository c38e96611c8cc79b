"""
HTTP caching decisions for S3 responses: whether to store, for how long, and whether every
use must be revalidated (RFC 9111, shared-cache rules).

Freshness lifetime: ``s-maxage`` > ``max-age`` > ``Expires`` - ``Date`` > the configured TTL.
``no-store`` and ``private`` are never stored; ``no-cache`` is stored but revalidated before
every use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from yatagarasu.http.dates import http_date


@dataclass(frozen=True)
class Freshness:
    """
    :ivar storable: whether a shared cache may store the response.
    :ivar ttl: freshness lifetime in seconds.
    :ivar revalidate: ``no-cache``: revalidate before every use.
    """

    storable: bool
    ttl: float
    revalidate: bool


def _directives(values: Iterable[bytes]) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for value in values:
        for part in value.decode("latin-1").split(","):
            name, sep, argument = part.strip().partition("=")
            if name:
                directives[name.lower()] = argument.strip().strip('"') if sep else None
    return directives


def _seconds(value: str | None) -> float | None:
    if value is None or not value.isdigit():
        return None
    return float(value)


def freshness(
    cache_control: Iterable[bytes],
    expires: bytes | None,
    date: bytes | None,
    default_ttl: float,
) -> Freshness:
    """
    :param cache_control: the ``Cache-Control`` header values.
    :param expires: the ``Expires`` header, if any.
    :param date: the ``Date`` header, if any.
    :param default_ttl: the configured TTL when the response gives none.
    :returns: the decision.
    """
    directives = _directives(cache_control)
    if "no-store" in directives or "private" in directives:
        return Freshness(False, 0.0, False)
    revalidate = "no-cache" in directives
    for name in ("s-maxage", "max-age"):
        if name in directives:
            ttl = _seconds(directives[name])
            return Freshness(True, ttl if ttl is not None else 0.0, revalidate)
    expires_at = http_date(expires)
    if expires is not None:
        base = http_date(date)
        if expires_at is None or base is None:
            return Freshness(True, 0.0, revalidate)  # invalid Expires means "already expired"
        return Freshness(True, max(0.0, expires_at - base), revalidate)
    return Freshness(True, default_ttl, revalidate)
