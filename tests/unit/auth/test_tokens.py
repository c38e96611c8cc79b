"""Where tokens are read from and how verified ones are remembered (yatagarasu.auth.tokens)."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from zope.interface.verify import verifyObject

from tests.unit.auth.jwt_kit import (
    NOW,
    SECRET,
    accepted,
    clock_at,
    outcome,
    refused,
    request_with,
    scheme,
    token,
)
from yatagarasu.auth.claims import ClaimRule
from yatagarasu.config import ConfigError
from yatagarasu.config.typed import from_raw
from yatagarasu.errors import AuthenticationRequired, Forbidden, InvalidCredentials
from yatagarasu.interfaces import IImmediateAuthScheme
from yatagarasu.values import Identity


def test_token_sources_in_order() -> None:
    s = scheme(
        {
            "secret": SECRET,
            "token_sources": [
                {"type": "header", "name": "X-Auth-Token", "prefix": "Token "},
                {"type": "query", "name": "access_token"},
                {"type": "bearer_header"},
            ],
        }
    )
    tok = token(SECRET, "HS256")
    assert isinstance(
        outcome(s.authenticate(request_with(f"Token {tok}", "X-Auth-Token"))), Identity
    )
    assert isinstance(outcome(s.authenticate(request_with(f"bEaReR {tok}"))), Identity)
    by_query = request_with(args={b"access_token": [tok.encode()]})
    assert isinstance(outcome(s.authenticate(by_query)), Identity)
    wrong_prefix = outcome(s.authenticate(request_with(f"Bearer {tok}", "X-Auth-Token")))
    assert isinstance(wrong_prefix, AuthenticationRequired)


def test_token_source_needs_name() -> None:
    with pytest.raises(ConfigError) as info:
        scheme({"secret": SECRET, "token_sources": [{"type": "query"}]})
    assert info.value.path == "jwt.token_sources[0].name"


def test_reused_token_is_verified_once_until_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = clock_at()
    s = scheme({"secret": SECRET}, clock)
    calls: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr("yatagarasu.auth.jwt.jwt.decode", counting_decode)
    tok = token(SECRET, "HS256", {"exp": int(NOW) + 100})
    for _ in range(5):
        accepted(s, tok)
    assert calls == ["decode"]
    clock.advance(100)  # at the exp: no longer cached, verified again, and expired
    error = refused(s, tok)
    assert isinstance(error, InvalidCredentials) and error.message == "token expired"
    assert calls == ["decode", "decode"]


def test_authenticate_now_answers_only_for_a_known_valid_allowed_token() -> None:
    clock = clock_at()
    s = scheme({"secret": SECRET}, clock)
    assert verifyObject(IImmediateAuthScheme, s)
    tok = token(SECRET, "HS256", {"exp": int(NOW) + 100, "role": "user"})
    assert s.authenticate_now(request_with(f"Bearer {tok}")) is None  # not verified yet
    assert s.authenticate_now(request_with()) is None  # no token
    accepted(s, tok)
    identity = s.authenticate_now(request_with(f"Bearer {tok}"))
    assert identity is not None and identity.subject == "alice"
    strict = s.with_rules(
        [from_raw(ClaimRule, {"claim": "role", "operator": "equals", "value": "admin"}, "r")]
    )
    assert strict.authenticate_now(request_with(f"Bearer {tok}")) is None  # refused: ask later
    assert isinstance(refused(strict, tok), Forbidden)
    clock.advance(101)
    assert s.authenticate_now(request_with(f"Bearer {tok}")) is None  # expired


def test_cached_token_still_checked_against_rules() -> None:
    s = scheme({"secret": SECRET})
    tok = token(SECRET, "HS256", {"role": "user"})
    accepted(s, tok)
    strict = s.with_rules(
        [from_raw(ClaimRule, {"claim": "role", "operator": "equals", "value": "admin"}, "r")]
    )
    assert isinstance(refused(strict, tok), Forbidden)
