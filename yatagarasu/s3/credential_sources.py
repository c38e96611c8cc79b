"""
From an upstream's ``s3`` section (its ``credentials`` block) and the process environment to
its credential provider.

Sources: ``static`` (``access_key``/``secret_key``/``session_token``), ``anonymous`` (unsigned
requests), ``env`` (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``),
``profile`` (``~/.aws/credentials`` then ``~/.aws/config``; ``AWS_SHARED_CREDENTIALS_FILE``,
``AWS_CONFIG_FILE``, ``AWS_PROFILE``), ``instance`` (IMDSv2), ``ecs`` and ``web_identity``.
Without a ``source``: ``static`` when keys are given, else the standard chain, in botocore's
order: the first of env, web identity, profile, ECS, instance metadata whose settings are
present (instance metadata last, unless ``AWS_EC2_METADATA_DISABLED=true``). The chain reads
the environment and the files when the provider is built (start-up, a reload that changed the
section); the ``env`` and ``profile`` fetches read them again at each (re)try.
"""

from __future__ import annotations

import configparser
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from random import Random

from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent
from twisted.web.iweb import IAgent

from yatagarasu.config.schema import S3Config
from yatagarasu.http.outgoing import QuietPool
from yatagarasu.interfaces import ICredentialProvider
from yatagarasu.s3.credential_fetchers import ContainerCredentials, InstanceMetadata, WebIdentity
from yatagarasu.s3.credentials import (
    CredentialsFetchError,
    Fetched,
    FixedCredentials,
    RefreshingCredentials,
)
from yatagarasu.s3.sigv4 import Credentials

DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254"
ECS_BASE = "http://169.254.170.2"
DEFAULT_SESSION_NAME = "yatagarasu"


def credential_provider(
    reactor: IReactorTime,
    config: S3Config,
    environ: Mapping[str, str],
    *,
    upstream: str,
    observe: Callable[[str, str], None] | None = None,
    agent: IAgent | None = None,
    random: Random | None = None,
) -> ICredentialProvider:
    """
    :param reactor: time and TCP (the fetches).
    :param config: the upstream's ``s3`` section (:meth:`S3Config.upstreams`).
    :param environ: the process environment.
    :param upstream: ``bucket`` or ``bucket/replica`` (logs).
    :param observe: told ``(source, result)`` of every fetch (the metric).
    :param agent: the HTTP agent of the fetches (tests); default: one of its own.
    :param random: retry jitter.
    :returns: the provider of that upstream's credentials.
    """
    source = config.credential_source
    if source == "static":
        return FixedCredentials(
            "static", Credentials(config.access_key, config.secret_key, config.session_token)
        )
    if source == "anonymous":
        return FixedCredentials("anonymous", None)
    if source == "chain":
        source = _chain_source(config, environ)
    fetch = _fetcher(source, config, environ, reactor, agent)
    return RefreshingCredentials(
        reactor,
        source,
        fetch,
        upstream=upstream,
        observe=None if observe is None else partial(observe, source),
        random=random,
    )


def _chain_source(config: S3Config, environ: Mapping[str, str]) -> str:
    """The first source of the standard chain whose settings are present."""
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return "env"
    settings = config.credentials
    token_file = settings.web_identity_token_file or environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    if token_file and (settings.role_arn or environ.get("AWS_ROLE_ARN")):
        return "web_identity"
    if _profile_keys(settings.profile, environ) is not None:
        return "profile"
    if environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or environ.get(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
    ):
        return "ecs"
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return "chain"  # found nothing: fails (and retries) until a reload
    return "instance"


def _fetcher(
    source: str,
    config: S3Config,
    environ: Mapping[str, str],
    reactor: IReactorTime,
    agent: IAgent | None,
) -> Callable[[], Awaitable[Fetched]]:
    settings = config.credentials
    if source == "env":
        return partial(_from_environment, environ)
    if source == "profile":
        return partial(_from_profile, settings.profile, environ)
    if source == "chain":
        return _nothing_found
    http = agent if agent is not None else Agent(reactor, pool=QuietPool(reactor, persistent=False))
    if source == "instance":
        endpoint = (
            settings.metadata_endpoint
            or environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            or DEFAULT_METADATA_ENDPOINT
        )
        return InstanceMetadata(http, endpoint)
    if source == "ecs":
        url = environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or (
            ECS_BASE + environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "")
            if environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            else ""
        )
        if not url:
            return partial(_missing, "AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI")
        return ContainerCredentials(
            http,
            url,
            environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        )
    # web_identity
    role_arn = settings.role_arn or environ.get("AWS_ROLE_ARN")
    token_file = settings.web_identity_token_file or environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    if not role_arn or not token_file:
        return partial(_missing, "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE")
    return WebIdentity(
        http,
        settings.sts_endpoint or f"https://sts.{config.region}.amazonaws.com",
        role_arn,
        settings.role_session_name or environ.get("AWS_ROLE_SESSION_NAME") or DEFAULT_SESSION_NAME,
        token_file,
    )


async def _from_environment(environ: Mapping[str, str]) -> Fetched:
    access, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise CredentialsFetchError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
    return Fetched(Credentials(access, secret, environ.get("AWS_SESSION_TOKEN") or None))


async def _from_profile(profile: str | None, environ: Mapping[str, str]) -> Fetched:
    found = _profile_keys(profile, environ)
    if found is None:
        name = _profile_name(profile, environ)
        raise CredentialsFetchError(
            f"profile {name!r} has no aws_access_key_id/aws_secret_access_key in"
            f" {_shared_file(environ, 'AWS_SHARED_CREDENTIALS_FILE', 'credentials')} or"
            f" {_shared_file(environ, 'AWS_CONFIG_FILE', 'config')}"
        )
    return Fetched(found)


async def _nothing_found() -> Fetched:
    raise CredentialsFetchError(
        "the credentials chain found none (no AWS_ACCESS_KEY_ID, web identity, profile or"
        " container credentials; instance metadata disabled by AWS_EC2_METADATA_DISABLED)"
    )


async def _missing(what: str) -> Fetched:
    raise CredentialsFetchError(f"{what} not set")


def _profile_name(profile: str | None, environ: Mapping[str, str]) -> str:
    return profile or environ.get("AWS_PROFILE") or "default"


def _shared_file(environ: Mapping[str, str], variable: str, name: str) -> Path:
    given = environ.get(variable)
    if given:
        return Path(given).expanduser()
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".aws" / name


def _profile_keys(profile: str | None, environ: Mapping[str, str]) -> Credentials | None:
    """The profile's keys: the credentials file's ``[name]``, else the config file's
    ``[profile name]`` (``[default]`` for the default profile)."""
    name = _profile_name(profile, environ)
    places = (
        (_shared_file(environ, "AWS_SHARED_CREDENTIALS_FILE", "credentials"), name),
        (
            _shared_file(environ, "AWS_CONFIG_FILE", "config"),
            name if name == "default" else f"profile {name}",
        ),
    )
    for path, section in places:
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(path.read_text(), str(path))
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue
        if not parser.has_section(section):
            continue
        values = parser[section]
        access = values.get("aws_access_key_id", "").strip()
        secret = values.get("aws_secret_access_key", "").strip()
        if access and secret:
            token = values.get("aws_session_token", "").strip()
            return Credentials(access, secret, token or None)
    return None
