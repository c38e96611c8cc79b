"""
Building access control from the config (yatagarasu.auth.from_config): fail closed, per-bucket jwt,
the examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit.auth.jwt_kit import (
    SECRET,
    accepted,
    clock_at,
    outcome,
    public_pem,
    refused,
    request_with,
    rsa_key,
    token,
    write,
)
from tests.unit.fakes import bucket_entry
from yatagarasu import plugins
from yatagarasu.auth.first_applicable import FirstApplicableScheme
from yatagarasu.auth.from_config import build_access_control
from yatagarasu.auth.signed_url import SignedUrlScheme
from yatagarasu.config import ConfigError, parse_config
from yatagarasu.errors import Forbidden
from yatagarasu.testing.requests import fake_request
from yatagarasu.values import Identity


def test_auth_enabled_without_verifier_fails_closed() -> None:
    config = parse_config({"buckets": [bucket_entry(auth={"enabled": True})]}, {})
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == "buckets[0].auth.enabled"


def test_unknown_scheme_lists_available() -> None:
    config = parse_config(
        {"buckets": [bucket_entry(auth={"enabled": True, "scheme": "magic"})]}, {}
    )
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == "buckets[0].auth.scheme"
    assert "jwt" in info.value.message


def test_per_bucket_jwt_overrides_global_and_admin(tmp_path: Path) -> None:
    other = "o" * 64
    config = parse_config(
        {
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": [
                bucket_entry("global", "/g", auth={"enabled": True}),
                bucket_entry("own", "/o", jwt={"enabled": True, "secret": other}),
                bucket_entry("public", "/p"),
                bucket_entry("off", "/off", jwt={"enabled": False, "secret": other}),
            ],
        },
        {},
    )
    access = build_access_control(config, clock_at(), plugins)
    assert set(access.schemes) == {"global", "own"}
    accepted(access.schemes["global"], token(SECRET, "HS256"))  # type: ignore[arg-type]
    refused(access.schemes["own"], token(SECRET, "HS256"))  # type: ignore[arg-type]
    accepted(access.schemes["own"], token(other, "HS256"))  # type: ignore[arg-type]
    assert access.admin is not None
    admin = access.admin
    assert isinstance(
        outcome(admin.authenticate(request_with(f"Bearer {token(SECRET, 'HS256')}"))), Forbidden
    )
    admin_token = token(SECRET, "HS256", {"role": "admin"})
    assert isinstance(outcome(admin.authenticate(request_with(f"Bearer {admin_token}"))), Identity)


@pytest.mark.parametrize("own", ["jwt", "auth.jwt"])
def test_bucket_jwt_enabled_false_contradicting_auth_enabled_is_refused(own: str) -> None:
    jwt_section = {"enabled": False, "secret": SECRET}
    auth: dict[str, Any] = {"enabled": True}
    extra: dict[str, Any] = {"auth": auth}
    if own == "jwt":
        extra["jwt"] = jwt_section
    else:
        auth["jwt"] = jwt_section
    config = parse_config({"buckets": [bucket_entry("b", "/b", **extra)]}, {})
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == f"buckets[0].{own}.enabled"
    assert "contradicts auth.enabled" in info.value.message


def test_bucket_auth_jwt_enabled_true_turns_auth_on() -> None:
    config = parse_config(
        {"buckets": [bucket_entry("b", "/b", auth={"jwt": {"enabled": True, "secret": SECRET}})]},
        {},
    )
    access = build_access_control(config, clock_at(), plugins)
    accepted(access.schemes["b"], token(SECRET, "HS256"))  # type: ignore[arg-type]


def test_seed_phase31_examples_load(tmp_path: Path) -> None:
    rsa_path = write(tmp_path, "rsa.pem", public_pem(rsa_key()))
    ec_path = write(tmp_path, "ec.pem", public_pem(ec.generate_private_key(ec.SECP256R1())))
    key2 = write(tmp_path, "rsa2.pem", public_pem(rsa_key()))
    examples = [
        {
            "name": "products",
            "path_prefix": "/products",
            "jwt": {
                "enabled": True,
                "algorithm": "RS256",
                "rsa_public_key_path": rsa_path,
                "token_sources": [{"type": "bearer_header"}],
            },
        },
        {
            "name": "api",
            "path_prefix": "/api",
            "jwt": {"enabled": True, "algorithm": "ES256", "ecdsa_public_key_path": ec_path},
        },
        {
            "name": "secure",
            "path_prefix": "/secure",
            "jwt": {
                "enabled": True,
                "jwks_url": "https://auth.example.com/.well-known/jwks.json",
                "jwks_refresh_interval_seconds": 3600,
            },
        },
        {
            "name": "multi",
            "path_prefix": "/multi",
            "jwt": {
                "enabled": True,
                "keys": [
                    {"id": "key1", "algorithm": "HS256", "secret": "${JWT_SECRET_1}"},
                    {"id": "key2", "algorithm": "RS256", "rsa_public_key_path": key2},
                ],
            },
        },
    ]
    for example in examples:
        example["s3"] = {"bucket": "b"}
    config = parse_config({"buckets": examples}, {"JWT_SECRET_1": SECRET})
    access = build_access_control(config, clock_at(), plugins)
    assert set(access.schemes) == {"products", "api", "secure", "multi"}
    assert len(access.services) == 1  # the JWKS refresh timer


SIGNING = {"keys": [{"kid": "k1", "secret": "${SIGNING_KEY}"}]}


def test_schemes_list_builds_one_scheme_in_order_and_a_signer() -> None:
    config = parse_config(
        {
            "jwt": {"secret": SECRET},
            "buckets": [
                bucket_entry(
                    auth={"enabled": True, "schemes": ["jwt", "signed_url"], "signed_url": SIGNING}
                ),
                bucket_entry(
                    "links",
                    "/links",
                    auth={"enabled": True, "scheme": "signed_url", "signed_url": SIGNING},
                ),
                bucket_entry("old", "/old", auth={"enabled": True}),
            ],
        },
        {"SIGNING_KEY": "e" * 32},
    )
    access = build_access_control(config, clock_at(), plugins)
    both = access.schemes["pub"]
    assert isinstance(both, FirstApplicableScheme) and both.name == "jwt+signed_url"
    assert isinstance(access.schemes["links"], SignedUrlScheme)
    assert access.schemes["old"].name == "jwt"
    assert set(access.signers) == {"pub", "links"}
    link = access.signers["pub"].sign("/pub/k", 60)
    assert link.kid == "k1"
    path, _, query = link.url.partition("?")
    request = fake_request(path, args=parse_qs(query))
    assert isinstance(outcome(both.authenticate(request)), Identity)


@pytest.mark.parametrize(
    ("auth", "path", "message"),
    [
        ({"schemes": []}, "buckets[0].auth.schemes", "list at least one scheme"),
        ({"schemes": ["jwt"], "scheme": "jwt"}, "buckets[0].auth.schemes", "not both"),
        ({"schemes": ["jwt", "jwt"]}, "buckets[0].auth.schemes[1]", "listed twice"),
        ({"signed_url": {}}, "buckets[0].auth.signed_url", "not among the bucket's schemes"),
        ({"schemes": ["apikey", "magic"]}, "buckets[0].auth.schemes", "both read auth.settings"),
        ({"scheme": "signed_url", "settings": {}}, "buckets[0].auth.settings", "no plugin scheme"),
        ({"settings": {"keys": []}}, "buckets[0].auth.settings", "no plugin scheme reads it"),
    ],
)
def test_bad_scheme_lists(auth: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"buckets": [bucket_entry(auth={"enabled": True, **auth})]}, {})
    assert info.value.path == path
    assert message in info.value.message


def test_scheme_list_errors_name_the_entry() -> None:
    config = parse_config(
        {"buckets": [bucket_entry(auth={"enabled": True, "schemes": ["signed_url", "magic"],
                                        "signed_url": {"keys": [{"secret": "e" * 32}]}})]},
        {},
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == "buckets[0].auth.schemes[1]"
    config = parse_config(
        {"buckets": [bucket_entry(auth={"enabled": True, "schemes": ["signed_url"]})]}, {}
    )
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == "buckets[0].auth.signed_url.keys"
