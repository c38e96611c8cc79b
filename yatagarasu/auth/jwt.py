"""
The built-in ``jwt`` auth scheme (PyJWT): HS/RS/PS/ES/EdDSA, key ids, JWKS, standard checks,
claims rules, and a bounded cache of tokens already verified (valid until their ``exp``).

One clock: PyJWT verifies the signature, ``iss``, ``aud`` and the required claims, with its own
time checks off (it would read the wall clock); ``exp``, ``nbf`` and ``iat`` are checked here
against the injected clock, the same one the verified-token cache expires on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface import implementer

from yatagarasu.auth.claims import ClaimRule, failing_rule
from yatagarasu.auth.jwks import JwksKeySet
from yatagarasu.auth.keys import VerificationKey, public_key_from_file, secret_key
from yatagarasu.auth.tokens import TokenSource, find_token
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import AuthenticationRequired, ConfigError, Forbidden, InvalidCredentials
from yatagarasu.interfaces import (
    IAdminAuthSource,
    IApplicableAuthScheme,
    IAuthSchemeFactory,
    IImmediateAuthScheme,
)
from yatagarasu.values import Identity

MAX_TOKEN_LENGTH = 8192
_KEY_FILE_ALIASES = ("rsa_public_key_path", "ecdsa_public_key_path", "public_key_path")
#: The time claims in PyJWT's order, with the error PyJWT names when one is not a number.
_TIME_CLAIMS = (("iat", "InvalidIssuedAtError"), ("nbf", "DecodeError"), ("exp", "DecodeError"))


@dataclass(frozen=True)
class JwtKeyConfig:
    """One entry of ``keys:``: a secret or a public key file, selected by ``kid``."""

    id: str | None = field(default=None, metadata={"aliases": ("kid",)})
    algorithm: str | None = None
    secret: str | None = None
    path: str | None = field(default=None, metadata={"aliases": _KEY_FILE_ALIASES})

    def check(self, path: str) -> None:
        if (self.secret is None) == (self.path is None):
            raise ConfigError(path, "give exactly one of secret or path (public key file)")


@dataclass(frozen=True)
class JwtSettings:
    """
    The ``jwt`` section (global, per bucket, or ``auth.jwt``).

    :ivar enabled: read before these settings are built: at the top level ``false`` turns the
        global verifier off (:func:`yatagarasu.auth.from_config.global_jwt_settings`); in a
        bucket's ``jwt`` it turns that bucket's authentication on.
    """

    enabled: bool = True
    algorithm: str | None = None
    secret: str | None = None
    public_key_path: str | None = field(
        default=None, metadata={"aliases": ("rsa_public_key_path", "ecdsa_public_key_path")}
    )
    keys: tuple[JwtKeyConfig, ...] = ()
    jwks_url: str | None = None
    jwks_refresh_interval_seconds: float = field(
        default=3600.0, metadata={"aliases": ("jwks_refresh_interval_secs",)}
    )
    token_sources: tuple[TokenSource, ...] = (TokenSource(),)
    claims: tuple[ClaimRule, ...] = field(
        default=(), metadata={"aliases": ("claims_verification",)}
    )
    admin_claims: tuple[ClaimRule, ...] = ()
    issuer: str | None = field(default=None, metadata={"aliases": ("iss",)})
    audience: str | tuple[str, ...] | None = field(default=None, metadata={"aliases": ("aud",)})
    require_exp: bool = True
    leeway_seconds: float = field(default=0.0, metadata={"aliases": ("leeway",)})
    verified_token_cache_size: int = 10_000

    def check(self, path: str) -> None:
        if not (self.secret or self.public_key_path or self.keys or self.jwks_url):
            raise ConfigError(
                path,
                "no verification key: set secret, rsa_public_key_path/ecdsa_public_key_path, "
                "keys or jwks_url",
            )
        if not self.token_sources:
            raise ConfigError(join(path, "token_sources"), "at least one token source is needed")
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ConfigError(join(path, "jwks_url"), "must be an http(s) URL")
        if self.jwks_refresh_interval_seconds <= 0:
            raise ConfigError(join(path, "jwks_refresh_interval_seconds"), "must be > 0")
        if self.leeway_seconds < 0:
            raise ConfigError(join(path, "leeway_seconds"), "must be >= 0")
        if self.verified_token_cache_size < 0:
            raise ConfigError(join(path, "verified_token_cache_size"), "must be >= 0")


def load_keys(settings: JwtSettings, path: str) -> list[VerificationKey]:
    """
    Read every configured key once.

    :param settings: validated settings.
    :param path: their dotted key path.
    :returns: the keys (without JWKS ones).
    :raises ConfigError: unreadable or mismatched keys.
    """
    keys: list[VerificationKey] = []
    algorithm_path = join(path, "algorithm")
    if settings.secret:
        keys.append(secret_key(settings.secret, None, settings.algorithm, algorithm_path))
    if settings.public_key_path:
        keys.append(
            public_key_from_file(
                settings.public_key_path,
                None,
                settings.algorithm,
                join(path, "rsa_public_key_path"),
                algorithm_path,
            )
        )
    for i, entry in enumerate(settings.keys):
        entry_path = f"{join(path, 'keys')}[{i}]"
        algorithm = entry.algorithm or settings.algorithm
        if entry.secret is not None:
            keys.append(
                secret_key(entry.secret, entry.id, algorithm, join(entry_path, "algorithm"))
            )
        else:
            assert entry.path is not None
            keys.append(
                public_key_from_file(
                    entry.path,
                    entry.id,
                    algorithm,
                    join(entry_path, "path"),
                    join(entry_path, "algorithm"),
                )
            )
    return keys


@implementer(IImmediateAuthScheme, IApplicableAuthScheme, IAdminAuthSource)
class JwtScheme:
    """
    Verify bearer tokens.

    :param settings: validated settings.
    :param keys: keys from the configuration.
    :param jwks: the JWKS key set, when ``jwks_url`` is configured.
    :param clock: the one time source: ``exp``/``nbf``/``iat`` checks and token cache expiry.
    :param rules: the claims rules that must pass (``claims`` or, for admin, ``admin_claims``).
    """

    name = "jwt"

    def __init__(
        self,
        settings: JwtSettings,
        keys: Sequence[VerificationKey],
        jwks: JwksKeySet | None,
        clock: IReactorTime,
        rules: Sequence[ClaimRule],
    ) -> None:
        self._settings = settings
        self._keys = list(keys)
        self._jwks = jwks
        self._clock = clock
        self._rules = tuple(rules)
        self._verified: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._options: Any = {
            "require": ["exp"] if settings.require_exp else [],
            # checked by check_times() against self._clock instead of the wall clock
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        self._audience = settings.audience
        if self._audience is None:
            self._options["verify_aud"] = False

    def services(self) -> list[IService]:
        """:returns: background services (the JWKS refresh timer)."""
        return [self._jwks.service()] if self._jwks is not None else []

    def with_rules(self, rules: Sequence[ClaimRule]) -> JwtScheme:
        """
        :param rules: other claims rules (e.g. ``admin_claims``).
        :returns: a scheme sharing keys and JWKS, checking ``rules`` instead.
        """
        return JwtScheme(self._settings, self._keys, self._jwks, self._clock, rules)

    def admin_scheme(self) -> JwtScheme | None:
        """
        See :meth:`IAdminAuthSource.admin_scheme`.

        :returns: this scheme checking ``admin_claims``, or ``None`` when none are configured.
        """
        rules = self._settings.admin_claims
        return self.with_rules(rules) if rules else None

    def _known(self, token: str) -> Identity | None:
        """:returns: the identity of a token verified before and still valid, else ``None``."""
        cached = self._verified.get(token)
        if cached is None:
            return None
        valid_until, identity = cached
        if self._clock.seconds() < valid_until:
            self._verified.move_to_end(token)
            return identity
        del self._verified[token]
        return None

    def applies(self, request: IRequest) -> bool:
        """See :meth:`IApplicableAuthScheme.applies`: a token is in one of the sources."""
        return find_token(self._settings.token_sources, request) is not None

    def authenticate_now(self, request: IRequest) -> Identity | None:
        """See :meth:`IImmediateAuthScheme.authenticate_now`: a token verified before."""
        token = find_token(self._settings.token_sources, request)
        identity = self._known(token) if token is not None else None
        if identity is None or failing_rule(self._rules, identity.claims) is not None:
            return None
        return identity

    def authenticate(self, request: IRequest) -> Deferred[Identity]:
        token = find_token(self._settings.token_sources, request)
        if token is None:
            return fail(AuthenticationRequired("a bearer token is required"))
        identity = self._known(token)
        if identity is not None:
            return self._authorize(identity)
        if len(token) > MAX_TOKEN_LENGTH:
            return fail(InvalidCredentials("token too large"))
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return fail(InvalidCredentials("malformed token"))
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return fail(InvalidCredentials("malformed token"))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            return fail(InvalidCredentials("token algorithm not allowed"))
        candidates = self._candidates(kid)
        if not candidates and kid is not None and self._jwks is not None:
            return Deferred.fromCoroutine(self._after_jwks_refresh(token, kid, alg))
        return self._verify(token, kid, alg, candidates)

    async def _after_jwks_refresh(self, token: str, kid: str, alg: str) -> Identity:
        assert self._jwks is not None
        await self._jwks.refresh_for_unknown_kid()
        return await self._verify(token, kid, alg, self._candidates(kid))

    def _candidates(self, kid: str | None) -> list[VerificationKey]:
        keys = self._keys + (self._jwks.keys if self._jwks is not None else [])
        if kid is None:
            return keys
        named = [k for k in keys if k.kid == kid]
        # A kid we do not know may still belong to a key configured without an id.
        return named or [k for k in keys if k.kid is None]

    def _verify(
        self, token: str, kid: str | None, alg: str, candidates: list[VerificationKey]
    ) -> Deferred[Identity]:
        if not candidates:
            return fail(InvalidCredentials("unknown key id"))
        usable = [k for k in candidates if alg in k.algorithms]
        if not usable:
            return fail(InvalidCredentials("token algorithm not allowed for this key"))
        settings = self._settings
        last_error = "invalid signature"
        for key in usable:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    options=self._options,
                    audience=self._audience,
                    issuer=settings.issuer,
                    leeway=settings.leeway_seconds,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.MissingRequiredClaimError as e:
                return fail(InvalidCredentials(f"token has no {e.claim} claim"))
            except jwt.InvalidAudienceError:
                return fail(InvalidCredentials("token audience not accepted"))
            except jwt.InvalidIssuerError:
                return fail(InvalidCredentials("token issuer not accepted"))
            except jwt.PyJWTError as e:
                last_error = f"invalid token ({type(e).__name__})"
                continue
            problem = check_times(claims, self._clock.seconds(), settings.leeway_seconds)
            if problem is not None:
                return fail(InvalidCredentials(problem))
            identity = _identity(claims)
            self._remember(token, claims, identity)
            return self._authorize(identity)
        return fail(InvalidCredentials(last_error))

    def _remember(self, token: str, claims: Mapping[str, Any], identity: Identity) -> None:
        size = self._settings.verified_token_cache_size
        exp = claims.get("exp")
        if size == 0 or not isinstance(exp, int | float):
            return
        self._verified[token] = (float(exp) + self._settings.leeway_seconds, identity)
        while len(self._verified) > size:
            self._verified.popitem(last=False)

    def _authorize(self, identity: Identity) -> Deferred[Identity]:
        rule = failing_rule(self._rules, identity.claims)
        if rule is not None:
            return fail(Forbidden(f"token claim {rule.claim!r} does not satisfy the rules"))
        return succeed(identity)


def check_times(claims: Mapping[str, Any], now: float, leeway: float) -> str | None:
    """
    The time checks PyJWT makes (and the messages the scheme gave for its errors), but against
    ``now`` rather than the wall clock: ``iat`` and ``nbf`` not after ``now + leeway``, ``exp``
    after ``now - leeway`` (each only when present; PyJWT's ``require`` says whether ``exp``
    must be).

    :param claims: the claims, signature already verified.
    :param now: the injected clock's time, epoch seconds.
    :param leeway: seconds of tolerance for clock skew.
    :returns: why the token is refused, or ``None`` when it is valid at ``now``.
    """
    for claim, malformed in _TIME_CLAIMS:
        if claim not in claims:
            continue
        try:
            value = int(claims[claim])
        except (ValueError, TypeError, OverflowError):
            return f"invalid token ({malformed})"
        if claim == "exp" and value <= now - leeway:
            return "token expired"
        if claim != "exp" and value > now + leeway:
            return "token not yet valid"
    return None


def _identity(claims: Mapping[str, Any]) -> Identity:
    subject = claims.get("sub")
    return Identity(subject if isinstance(subject, str) else None, dict(claims), "jwt")


def jwt_settings(raw: Mapping[str, Any], path: str) -> JwtSettings:
    """
    :param raw: the ``jwt`` mapping.
    :param path: its dotted key path.
    :returns: validated settings.
    :raises ConfigError: naming the dotted path of the problem.
    """
    return from_raw(JwtSettings, raw, path)


@implementer(IPlugin, IAuthSchemeFactory)
class JwtSchemeFactory:
    """``IAuthSchemeFactory`` for ``jwt`` (registered in :mod:`yatagarasu.plugins.auth_jwt`)."""

    name = "jwt"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> JwtScheme:
        """
        :param settings: the ``jwt`` mapping.
        :param path: its dotted key path.
        :param reactor: time and TCP.
        :returns: the scheme (checking ``claims``).
        """
        parsed = jwt_settings(settings, path)
        keys = load_keys(parsed, path)
        jwks = (
            JwksKeySet(
                reactor, parsed.jwks_url, parsed.jwks_refresh_interval_seconds, parsed.algorithm
            )
            if parsed.jwks_url
            else None
        )
        return JwtScheme(parsed, keys, jwks, reactor, parsed.claims)
