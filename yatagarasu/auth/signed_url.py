"""
The built-in ``signed_url`` auth scheme: links that carry their own permission
(``?expires=&signature=``, see :mod:`yatagarasu.auth.link_signature`), for clients that cannot
send a header (a browser's ``<img src>`` or ``<video src>``).

A link is checked at once (no I/O, no Deferred): the key its ``kid`` names (every configured
key when it has none) must give the same HMAC, compared in constant time; then ``expires``
must lie after the injected clock's now, and no further ahead than ``max_lifetime_seconds``.
The link's parameters are read from the query string, which the proxy never forwards to S3
and never writes to a log; the cache key never includes them.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface import implementer

from yatagarasu.auth.link_signature import (
    BIND,
    BIND_IP,
    EXPIRES,
    KID,
    KID_PATTERN,
    MIN_KEY_BYTES,
    SIGNATURE,
    SignedLink,
    sign_link,
    signature,
)
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import AuthenticationRequired, ConfigError, InvalidCredentials
from yatagarasu.interfaces import IApplicableAuthScheme, IAuthSchemeFactory, IImmediateAuthScheme
from yatagarasu.values import Identity

NAME = "signed_url"
#: the longest ``expires`` value read (unix seconds have 10 digits until the year 2286)
_MAX_EXPIRES_DIGITS = 12
_SIGNATURE_BYTES = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # base64url alphabet
)


@dataclass(frozen=True)
class SigningKeyConfig:
    """One entry of ``keys``: an HMAC secret (``${ENV}`` expanded), with an optional id."""

    secret: str = field(repr=False)
    kid: str | None = field(default=None, metadata={"aliases": ("id",)})

    def check(self, path: str) -> None:
        if len(self.secret.encode("utf-8")) < MIN_KEY_BYTES:
            raise ConfigError(join(path, "secret"), f"must be at least {MIN_KEY_BYTES} bytes")
        if self.kid is not None and not KID_PATTERN.match(self.kid):
            raise ConfigError(
                join(path, "kid"), "must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )


@dataclass(frozen=True)
class SignedUrlSettings:
    """
    The ``signed_url`` section of a bucket's ``auth``.

    :ivar keys: the keys links are verified with; the first one signs new links
        (``POST /admin/sign``). Rotate by putting a new key first and keeping the old one
        until the links it signed have expired.
    :ivar max_lifetime_seconds: links whose ``expires`` lies further ahead are refused, and
        ``POST /admin/sign`` gives no longer lifetime.
    """

    keys: tuple[SigningKeyConfig, ...]
    max_lifetime_seconds: int = 7 * 24 * 3600

    def check(self, path: str) -> None:
        if not self.keys:
            raise ConfigError(join(path, "keys"), "at least one key is needed")
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.kid is not None and key.kid in seen:
                raise ConfigError(f"{join(path, 'keys')}[{i}].kid", f"{key.kid!r} is given twice")
            if key.kid is not None:
                seen.add(key.kid)
        if self.max_lifetime_seconds <= 0:
            raise ConfigError(join(path, "max_lifetime_seconds"), "must be > 0")


def client_ip(request: IRequest) -> str:
    """
    :param request: the request.
    :returns: the proxy's client address (``X-Forwarded-For`` from trusted proxies honoured,
        as for IP filters), or the socket peer's for a request the proxy did not make.
    """
    known = getattr(request, "client_address", None)
    if isinstance(known, str):
        return known
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _only(request: IRequest, name: str) -> bytes | None:
    """
    :param request: the request.
    :param name: a query parameter of signed links.
    :returns: its one value, or ``None`` when absent.
    :raises InvalidCredentials: it is given more than once.
    """
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise InvalidCredentials(f"malformed signed link ({name} given twice)")
    return bytes(values[0])


@implementer(IImmediateAuthScheme, IApplicableAuthScheme)
class SignedUrlScheme:
    """
    Verify signed links; sign new ones with the first key.

    :param settings: validated settings.
    :param clock: the time ``expires`` is compared with.
    """

    name = NAME

    def __init__(self, settings: SignedUrlSettings, clock: IReactorTime) -> None:
        self._keys = [(k.kid, k.secret.encode("utf-8")) for k in settings.keys]
        self._named = {kid: secret for kid, secret in self._keys if kid is not None}
        self._clock = clock
        self.max_lifetime_seconds = settings.max_lifetime_seconds

    def services(self) -> list[IService]:
        """:returns: ``[]`` (nothing to refresh)."""
        return []

    def applies(self, request: IRequest) -> bool:
        """See :meth:`IApplicableAuthScheme.applies`: the link has a ``signature``."""
        return bool((request.args or {}).get(SIGNATURE.encode("ascii")))

    def authenticate_now(self, request: IRequest) -> Identity | None:
        """See :meth:`IImmediateAuthScheme.authenticate_now`: every valid link is known at once."""
        try:
            return self._verify(request)
        except (AuthenticationRequired, InvalidCredentials):
            return None

    def authenticate(self, request: IRequest) -> Deferred[Identity]:
        """See :meth:`IAuthScheme.authenticate`: the answer is always there at once."""
        try:
            return succeed(self._verify(request))
        except (AuthenticationRequired, InvalidCredentials) as e:
            return fail(e)

    def sign(
        self,
        path: str,
        lifetime_seconds: int,
        *,
        method: str = "GET",
        client_ip: str | None = None,
    ) -> SignedLink:
        """
        A link for ``path``, valid for ``lifetime_seconds`` from the clock's now, signed with
        the first configured key.

        :param path: the URL path, bucket prefix included.
        :param lifetime_seconds: 1 to ``max_lifetime_seconds``.
        :param method: what the link is for (``GET`` also answers ``HEAD``).
        :param client_ip: bind the link to this client address.
        :returns: the link.
        :raises ValueError: a lifetime out of range, a path not starting with ``/``.
        """
        if not 0 < lifetime_seconds <= self.max_lifetime_seconds:
            raise ValueError(f"the lifetime must be 1 to {self.max_lifetime_seconds} seconds")
        kid, secret = self._keys[0]
        expires = int(self._clock.seconds()) + lifetime_seconds
        return sign_link(secret, path, expires, method=method, kid=kid, client_ip=client_ip)

    def _verify(self, request: IRequest) -> Identity:
        presented = _only(request, SIGNATURE)
        if presented is None:
            raise AuthenticationRequired("a signed link (expires and signature) is required")
        raw_expires = _only(request, EXPIRES)
        raw_kid = _only(request, KID)
        bind = _only(request, BIND)
        if raw_expires is None:
            raise InvalidCredentials("malformed signed link (no expires)")
        if not raw_expires.isdigit() or len(raw_expires) > _MAX_EXPIRES_DIGITS:
            raise InvalidCredentials("malformed signed link (expires is not unix seconds)")
        if bind not in (None, BIND_IP.encode("ascii")):
            raise InvalidCredentials("malformed signed link (unknown bind)")
        if not presented or presented.strip(_SIGNATURE_BYTES):
            raise InvalidCredentials("malformed signed link (signature)")
        kid = raw_kid.decode("ascii", "replace") if raw_kid is not None else None
        if kid is None:
            candidates: Sequence[bytes] = [secret for _, secret in self._keys]
        elif kid in self._named:
            candidates = [self._named[kid]]
        else:
            raise InvalidCredentials("unknown key id")
        expires = int(raw_expires)
        method = request.method.decode("ascii", "replace").upper()
        methods = (method, "GET") if method == "HEAD" else (method,)
        address = client_ip(request) if bind is not None else None
        path = request.path
        matched = False
        for secret in candidates:
            for signed_method in methods:
                expected = signature(secret, signed_method, path, expires, kid, address)
                # every candidate is compared, so the time taken does not say which one matched
                matched |= hmac.compare_digest(expected.encode("ascii"), presented)
        if not matched:
            raise InvalidCredentials("invalid link signature")
        now = self._clock.seconds()
        if expires <= now:
            raise InvalidCredentials("link expired")
        if expires > now + self.max_lifetime_seconds:
            raise InvalidCredentials("link lifetime exceeds max_lifetime_seconds")
        return Identity(None, {KID: kid, EXPIRES: expires}, NAME)


def signed_url_settings(raw: Mapping[str, Any], path: str) -> SignedUrlSettings:
    """
    :param raw: the ``auth.signed_url`` mapping.
    :param path: its dotted key path.
    :returns: validated settings.
    :raises ConfigError: naming the dotted path of the problem.
    """
    return from_raw(SignedUrlSettings, raw, path)


@implementer(IPlugin, IAuthSchemeFactory)
class SignedUrlSchemeFactory:
    """``IAuthSchemeFactory`` for ``signed_url`` (in :mod:`yatagarasu.plugins.auth_signed_url`)."""

    name = NAME

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> SignedUrlScheme:
        """
        :param settings: the ``auth.signed_url`` mapping.
        :param path: its dotted key path.
        :param reactor: the clock links expire on.
        :returns: the scheme.
        """
        return SignedUrlScheme(signed_url_settings(settings, path), reactor)
