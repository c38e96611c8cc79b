"""Build the auth schemes and authorizers a configuration asks for (fail closed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

from twisted.application.service import IService

from yatagarasu.auth.first_applicable import FirstApplicableScheme
from yatagarasu.auth.network import ClientAddressResolver, IpFilter
from yatagarasu.auth.signed_url import SignedUrlScheme
from yatagarasu.config.networks import parse_networks
from yatagarasu.config.schema import BucketConfig, Config
from yatagarasu.config.typed import join
from yatagarasu.discovery import available, find
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import (
    IAdminAuthSource,
    IAuthorizer,
    IAuthorizerFactory,
    IAuthScheme,
    IAuthSchemeFactory,
)


@dataclass
class AccessControl:
    """
    Everything that decides who may do what, built once per configuration.

    :ivar addresses: client address resolution (trusted proxies).
    :ivar ip_filters: per bucket name, when configured.
    :ivar schemes: per bucket name, the auth scheme (absent: public bucket).
    :ivar signers: per bucket name, the bucket's ``signed_url`` scheme (what
        ``POST /admin/sign`` signs with), for buckets that list it.
    :ivar admin: the admin API's scheme (``jwt`` with ``admin_claims``), or ``None``: then
        every admin route answers 403.
    :ivar authorizers: per bucket name, the authorizer asked after authentication
        (``buckets[].authorization``; absent: none).
    :ivar services: background services to run (JWKS refresh timers).
    """

    addresses: ClientAddressResolver
    ip_filters: dict[str, IpFilter] = field(default_factory=dict)
    schemes: dict[str, IAuthScheme] = field(default_factory=dict)
    signers: dict[str, SignedUrlScheme] = field(default_factory=dict)
    authorizers: dict[str, IAuthorizer] = field(default_factory=dict)
    admin: IAuthScheme | None = None
    services: list[IService] = field(default_factory=list)


#: Settings that describe *which keys* verify tokens: a bucket that names any of them
#: replaces the global ones as a group (a bucket's RSA key never mixes with a global secret).
_KEY_MATERIAL = frozenset({
    "algorithm", "secret", "public_key_path", "rsa_public_key_path", "ecdsa_public_key_path",
    "keys", "jwks_url", "jwks_refresh_interval_seconds", "jwks_refresh_interval_secs",
})  # fmt: skip


def global_jwt_settings(config: Config) -> Mapping[str, Any] | None:
    """
    The top-level ``jwt`` section, unless ``jwt.enabled: false`` turns it off.

    :param config: the validated configuration.
    :returns: the section, or ``None`` when it is absent or disabled (then no bucket inherits
        from it and the admin API is off).
    :raises ConfigError: ``jwt.enabled`` is not a boolean.
    """
    if config.jwt is None:
        return None
    enabled = config.jwt.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("jwt.enabled", f"expected true or false, got {enabled!r}")
    return config.jwt if enabled else None


def _merged_jwt(
    global_jwt: Mapping[str, Any] | None, bucket: BucketConfig
) -> Mapping[str, Any] | None:
    """
    A bucket's JWT settings: its own (``auth.jwt`` or ``jwt``) over the global ``jwt``
    (``None`` when disabled). Key material is inherited only when the bucket names none;
    ``admin_claims`` and ``enabled`` never are.
    """
    own = bucket.auth.jwt if bucket.auth.jwt is not None else bucket.jwt
    if own is None:
        return global_jwt
    inherited = {
        k: v
        for k, v in (global_jwt or {}).items()
        if k not in ("admin_claims", "enabled")
        and not (k in _KEY_MATERIAL and _KEY_MATERIAL & set(own))
    }
    return {**inherited, **own}


def _jwt_path(bucket: BucketConfig, index: int) -> str:
    if bucket.auth.jwt is not None:
        return f"buckets[{index}].auth.jwt"
    if bucket.jwt is not None:
        return f"buckets[{index}].jwt"
    return "jwt"


def _auth_enabled(bucket: BucketConfig, path: str) -> bool:
    """
    Whether the bucket authenticates: ``auth.enabled``, or the seed's spelling
    ``buckets[].jwt: {enabled: true}`` (or ``auth.jwt.enabled``).

    :raises ConfigError: the bucket's own ``jwt.enabled`` is not a boolean, or is ``false``
        while ``auth.enabled`` is ``true`` (which would silently leave auth on).
    """
    for own, own_path in ((bucket.auth.jwt, "auth.jwt"), (bucket.jwt, "jwt")):
        if own is None or "enabled" not in own:
            continue
        enabled = own["enabled"]
        key = join(path, f"{own_path}.enabled")
        if not isinstance(enabled, bool):
            raise ConfigError(key, f"expected true or false, got {enabled!r}")
        if enabled:
            return True
        if bucket.auth.enabled:
            raise ConfigError(key, "false contradicts auth.enabled: true (remove one of the two)")
    return bucket.auth.enabled


def build_access_control(config: Config, reactor: Any, plugins: ModuleType) -> AccessControl:
    """
    :param config: the validated configuration.
    :param reactor: time and TCP (JWKS).
    :param plugins: the plugin package auth schemes are found in.
    :returns: the access control objects; key files have been read.
    :raises ConfigError: a scheme that cannot verify anything, an unknown scheme or
        authorizer, bad keys, bad authorizer settings.
    """
    access = AccessControl(
        ClientAddressResolver(
            parse_networks(config.server.trusted_proxies, "server.trusted_proxies")
        )
    )
    jwt_factory = find(IAuthSchemeFactory, "jwt", "jwt", plugins)
    global_settings = global_jwt_settings(config)
    global_jwt: IAuthScheme | None = None
    if global_settings is not None:
        global_jwt = jwt_factory.build(global_settings, "jwt", reactor)
        access.services.extend(global_jwt.services())
        admin_source = IAdminAuthSource(global_jwt, None)
        if admin_source is not None:
            access.admin = admin_source.admin_scheme()
    for index, bucket in enumerate(config.buckets):
        path = f"buckets[{index}]"
        if bucket.ip_filter is not None:
            access.ip_filters[bucket.name] = IpFilter(
                parse_networks(bucket.ip_filter.allowlist, join(path, "ip_filter.allowlist")),
                parse_networks(bucket.ip_filter.blocklist, join(path, "ip_filter.blocklist")),
            )
        if bucket.authorization is not None:
            access.authorizers[bucket.name] = build_authorizer(
                bucket.authorization, join(path, "authorization"), reactor, plugins
            )
        if not _auth_enabled(bucket, path):
            continue
        built: list[IAuthScheme] = []
        for position, name in enumerate(bucket.auth.scheme_names):
            scheme_path = (
                f"{join(path, 'auth.schemes')}[{position}]"
                if bucket.auth.schemes is not None
                else join(path, "auth.scheme")
            )
            if name == "jwt":
                own = _bucket_jwt(config, index, global_settings, global_jwt, jwt_factory, reactor)
                if own is not global_jwt:
                    access.services.extend(own.services())
                built.append(own)
                continue
            factory = find(IAuthSchemeFactory, name, scheme_path, plugins)
            if name == "signed_url":
                settings, settings_path = bucket.auth.signed_url, join(path, "auth.signed_url")
            else:
                settings, settings_path = bucket.auth.settings, join(path, "auth.settings")
            scheme = factory.build(settings or {}, settings_path, reactor)
            access.services.extend(scheme.services())
            if isinstance(scheme, SignedUrlScheme):
                access.signers[bucket.name] = scheme
            built.append(scheme)
        scheme = built[0] if len(built) == 1 else FirstApplicableScheme(built)
        access.schemes[bucket.name] = scheme
    return access


def _bucket_jwt(
    config: Config,
    index: int,
    global_settings: Mapping[str, Any] | None,
    global_jwt: IAuthScheme | None,
    factory: IAuthSchemeFactory,
    reactor: Any,
) -> IAuthScheme:
    """
    The ``jwt`` scheme of ``buckets[index]``: the global one when the bucket has no settings
    of its own, else one built from its settings merged over the global ones.

    :raises ConfigError: no JWT settings apply to the bucket, or its own are bad.
    """
    bucket = config.buckets[index]
    path = f"buckets[{index}]"
    settings = _merged_jwt(global_settings, bucket)
    if settings is None and config.jwt is not None:
        raise ConfigError(
            join(path, "auth.enabled"),
            "authentication is enabled but the top-level jwt is disabled "
            f"(jwt.enabled: false) and {path} has no jwt settings of its own",
        )
    if settings is None:
        raise ConfigError(
            join(path, "auth.enabled"),
            f"authentication is enabled but no jwt settings apply (set jwt or {path}.jwt)",
        )
    if settings is global_settings and global_jwt is not None:
        return global_jwt
    return factory.build(settings, _jwt_path(bucket, index), reactor)


def build_authorizer(
    settings: Mapping[str, Any], path: str, reactor: Any, plugins: ModuleType
) -> IAuthorizer:
    """
    :param settings: a bucket's ``authorization`` mapping (``type`` names the plugin).
    :param path: its dotted key path.
    :param reactor: time and TCP.
    :param plugins: the plugin package authorizers are found in.
    :returns: the authorizer (nothing connected yet).
    :raises ConfigError: no ``type``, an unknown one, or settings its factory refuses.
    """
    kind = settings.get("type")
    if not isinstance(kind, str) or not kind:
        available = ", ".join(available_authorizers(plugins)) or "none"
        raise ConfigError(join(path, "type"), f"is required (available: {available})")
    factory = find(IAuthorizerFactory, kind, join(path, "type"), plugins)
    own = {k: v for k, v in settings.items() if k != "type"}
    return cast(IAuthorizer, factory.build(own, path, reactor))


def available_authorizers(plugins: ModuleType) -> list[str]:
    """:returns: the names of the installed authorizer plugins."""
    return list(available(IAuthorizerFactory, plugins))
