"""Claim rules (yatagarasu.auth.claims): operators, malformed rules, 403 on a failed rule."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.auth.jwt_kit import SECRET, accepted, refused, scheme, token
from yatagarasu.auth.claims import ClaimRule
from yatagarasu.config import ConfigError
from yatagarasu.config.typed import from_raw
from yatagarasu.errors import Forbidden

CLAIMS = {
    "role": "admin",
    "groups": ["eng", "ops"],
    "level": 5,
    "email": "a@example.com",
    "realm_access": {"roles": ["reader"]},
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"claim": "role", "operator": "equals", "value": "admin"}, True),
        ({"claim": "role", "operator": "equals", "value": "user"}, False),
        ({"claim": "role", "operator": "not_equals", "value": "user"}, True),
        ({"claim": "role", "operator": "in", "value": ["admin", "root"]}, True),
        ({"claim": "groups", "operator": "in", "value": ["ops"]}, True),
        ({"claim": "role", "operator": "not_in", "value": ["admin"]}, False),
        ({"claim": "groups", "operator": "contains", "value": "eng"}, True),
        ({"claim": "email", "operator": "contains", "value": "@example.com"}, True),
        ({"claim": "level", "operator": "gt", "value": 4}, True),
        ({"claim": "level", "operator": "gte", "value": 5}, True),
        ({"claim": "level", "operator": "lt", "value": 5}, False),
        ({"claim": "level", "operator": "lte", "value": 5}, True),
        ({"claim": "role", "operator": "gt", "value": 1}, False),
        ({"claim": "missing", "operator": "exists"}, False),
        ({"claim": "missing", "operator": "exists", "value": False}, True),
        ({"claim": "email", "operator": "regex", "value": r"@example\.com$"}, True),
        ({"claim": "realm_access.roles", "operator": "contains", "value": "reader"}, True),
        ({"claim": "sub", "operator": "equals", "value": "alice"}, True),
        ({"claim": "missing", "operator": "equals", "value": "x"}, False),
    ],
)
def test_claim_operators(rule: dict[str, Any], expected: bool) -> None:
    parsed = from_raw(ClaimRule, rule, "claims[0]")
    assert parsed.matches({"sub": "alice", **CLAIMS}) is expected


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ({"claim": "role", "operator": "like", "value": "x"}, "claims[0].operator"),
        ({"claim": "role", "operator": "in", "value": "admin"}, "claims[0].value"),
        ({"claim": "level", "operator": "gt", "value": "5"}, "claims[0].value"),
        ({"claim": "email", "operator": "regex", "value": "("}, "claims[0].value"),
        ({"claim": "", "operator": "exists"}, "claims[0].claim"),
        ({"claim": "role", "operator": "equals"}, "claims[0].value"),
    ],
)
def test_malformed_rules_are_config_errors(rule: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_raw(ClaimRule, rule, "claims[0]")
    assert info.value.path == path


def test_claims_rules_give_403() -> None:
    s = scheme(
        {"secret": SECRET, "claims": [{"claim": "role", "operator": "equals", "value": "admin"}]}
    )
    accepted(s, token(SECRET, "HS256", {"role": "admin"}))
    error = refused(s, token(SECRET, "HS256", {"role": "user"}))
    assert isinstance(error, Forbidden) and error.status == 403


def test_rust_style_claims_verification_alias() -> None:
    s = scheme(
        {
            "secret": SECRET,
            "claims_verification": [{"claim": "tenant", "operator": "equals", "value": "internal"}],
        }
    )
    assert isinstance(refused(s, token(SECRET, "HS256", {"tenant": "x"})), Forbidden)
