"""
From ``s3.credentials`` and the environment to a provider: the default (static with keys,
else the chain in botocore's order), env and profile files, and the settings of each source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from yatagarasu.config import parse_config
from yatagarasu.config.schema import S3Config
from yatagarasu.errors import ConfigError
from yatagarasu.s3.credential_fetchers import ContainerCredentials, InstanceMetadata, WebIdentity
from yatagarasu.s3.credential_sources import credential_provider
from yatagarasu.s3.credentials import RefreshingCredentials
from yatagarasu.s3.sigv4 import Credentials


def section(**s3: Any) -> S3Config:
    document = {"buckets": [{"name": "b", "path_prefix": "/b", "s3": {"bucket": "b", **s3}}]}
    return parse_config(document, {}).buckets[0].s3


def build(config: S3Config, environ: dict[str, str]) -> Any:
    return credential_provider(MemoryReactorClock(), config, environ, upstream="bucket b")


def started(provider: Any) -> Any:
    provider.startService()
    return provider


def test_keys_mean_static_and_no_keys_mean_the_chain() -> None:
    static = build(section(access_key="AKID", secret_key="s", session_token="t"), {})
    assert static.source == "static"
    assert static.current() == Credentials("AKID", "s", "t")
    env = {"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "senv"}
    chained = started(build(section(), env))
    assert isinstance(chained, RefreshingCredentials) and chained.source == "env"
    assert chained.current() == Credentials("AKENV", "senv", None)


def test_anonymous_signs_nothing() -> None:
    provider = build(section(credentials={"source": "anonymous"}), {})
    assert provider.current() is None and provider.usable()


def test_the_chain_follows_botocores_order(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("jwt")
    files = tmp_path / "credentials"
    files.write_text("[default]\naws_access_key_id = AKFILE\naws_secret_access_key = sfile\n")
    environ = {
        "AWS_ACCESS_KEY_ID": "AKENV",
        "AWS_SECRET_ACCESS_KEY": "senv",
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/r",
        "AWS_SHARED_CREDENTIALS_FILE": str(files),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/creds",
    }
    order = []
    for drop in (
        "AWS_ACCESS_KEY_ID",
        "AWS_ROLE_ARN",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        order.append(build(section(), environ).source)
        del environ[drop]
    order.append(build(section(), environ).source)
    assert order == ["env", "web_identity", "profile", "ecs", "instance"]
    environ["AWS_EC2_METADATA_DISABLED"] = "true"
    nothing = started(build(section(), environ))
    assert not nothing.usable()
    assert "the credentials chain found none" in nothing.status()["last_error"]


def test_profile_from_the_credentials_file_then_the_config_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = sdef\n"
        "[ops]\naws_access_key_id = AKOPS\naws_secret_access_key = sops\n"
        "aws_session_token = tops\n"
    )
    config = tmp_path / "config"
    config.write_text("[profile cfg]\naws_access_key_id = AKCFG\naws_secret_access_key = scfg\n")
    environ = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config)}
    profile = {"source": "profile"}
    assert started(build(section(credentials=profile), environ)).current().access_key == "AKDEF"
    ops = started(build(section(credentials=profile), {**environ, "AWS_PROFILE": "ops"}))
    assert ops.current() == Credentials("AKOPS", "sops", "tops")
    named = {"source": "profile", "profile": "cfg"}
    cfg = started(build(section(credentials=named), {**environ, "AWS_PROFILE": "ops"}))
    assert cfg.current().access_key == "AKCFG"
    missing = started(build(section(credentials={"source": "profile", "profile": "x"}), environ))
    assert not missing.usable()
    assert "profile 'x' has no aws_access_key_id" in missing.status()["last_error"]


def test_home_is_where_the_default_files_are(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKHOME\naws_secret_access_key = shome\n"
    )
    provider = started(build(section(), {"HOME": str(tmp_path)}))
    assert provider.source == "profile" and provider.current().access_key == "AKHOME"


def test_each_source_reads_its_settings_and_its_environment(tmp_path: Path) -> None:
    instance = build(section(credentials={"source": "instance"}), {})
    assert isinstance(instance._fetch, InstanceMetadata)
    assert instance._fetch.endpoint == "http://169.254.169.254"
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:8111/"}
    assert build(section(credentials={"source": "instance"}), env)._fetch.endpoint == (
        "http://127.0.0.1:8111"
    )
    given = {"source": "instance", "metadata_endpoint": "http://127.0.0.1:8222"}
    assert build(section(credentials=given), env)._fetch.endpoint == "http://127.0.0.1:8222"
    relative = {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}
    ecs = build(section(credentials={"source": "ecs"}), relative)._fetch
    assert isinstance(ecs, ContainerCredentials)
    assert ecs.url == "http://169.254.170.2/v2/credentials/x"
    web = build(
        section(
            region="eu-west-1",
            credentials={
                "source": "web_identity",
                "role_arn": "arn:r",
                "web_identity_token_file": "/t",
            },
        ),
        {},
    )._fetch
    assert isinstance(web, WebIdentity)
    assert web.sts_endpoint == "https://sts.eu-west-1.amazonaws.com/" and web.role_arn == "arn:r"
    unset = started(build(section(credentials={"source": "web_identity"}), {}))
    assert unset.status()["last_error"] == "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE not set"


@pytest.mark.parametrize(
    ("s3", "path", "message"),
    [
        ({"credentials": {"source": "static"}}, "s3.access_key", "needs access_key"),
        (
            {"access_key": "A", "secret_key": "s", "credentials": {"source": "env"}},
            "s3.access_key",
            "is for credentials.source static",
        ),
        (
            {"credentials": {"source": "env", "profile": "p"}},
            "s3.credentials.profile",
            "is read by source profile",
        ),
        (
            {"credentials": {"metadata_endpoint": "169.254.169.254"}},
            "s3.credentials.metadata_endpoint",
            "expected http(s)://host[:port]",
        ),
        ({"credentials": {"source": "vault"}}, "s3.credentials.source", "must be one of"),
    ],
)
def test_credentials_settings_are_checked(s3: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        section(**s3)
    assert f"buckets[0].{path}" in str(raised.value)
    assert message in str(raised.value)


def test_a_replica_has_its_own_source_or_the_buckets() -> None:
    config = section(
        bucket="",
        credentials={"source": "anonymous"},
        replicas=[
            {"name": "a", "bucket": "a", "priority": 1, "credentials": {"source": "env"}},
            {"name": "b", "bucket": "b", "priority": 2},
        ],
    )
    a, b = config.upstreams()
    assert a.s3.credential_source == "env" and b.s3.credential_source == "anonymous"
