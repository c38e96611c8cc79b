"""The ``signed_url`` scheme on a Clock: valid, tampered, expired, kid rotation, IP binding."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.auth.jwt_kit import NOW, clock_at, outcome
from yatagarasu.auth.link_signature import sign_link
from yatagarasu.auth.signed_url import SignedUrlScheme, SignedUrlSchemeFactory, signed_url_settings
from yatagarasu.config import ConfigError
from yatagarasu.errors import AuthenticationRequired, InvalidCredentials
from yatagarasu.testing.requests import fake_request
from yatagarasu.values import Identity

NEW = "n" * 32
OLD = "o" * 40
SETTINGS = {"keys": [{"kid": "new", "secret": NEW}, {"kid": "old", "secret": OLD}]}


def build(settings: dict[str, Any] | None = None, clock: Any = None) -> SignedUrlScheme:
    chosen = SETTINGS if settings is None else settings
    return SignedUrlSchemeFactory().build(chosen, "auth.signed_url", clock or clock_at())


def request_for(url: str, *, method: str = "GET", client_ip: str = "127.0.0.1") -> Any:
    parts = urlsplit(url)
    return fake_request(
        parts.path, method=method, args=parse_qs(parts.query, keep_blank_values=True),
        client_ip=client_ip,
    )  # fmt: skip


def result(scheme: SignedUrlScheme, url: str, **kwargs: Any) -> Identity | BaseException:
    request = request_for(url, **kwargs)
    answer = outcome(scheme.authenticate(request))
    now = scheme.authenticate_now(request)
    # the fast path knows every valid link, and never vouches for an invalid one
    assert now == (answer if isinstance(answer, Identity) else None)
    return answer


def refused(scheme: SignedUrlScheme, url: str, message: str, **kwargs: Any) -> None:
    answer = result(scheme, url, **kwargs)
    assert isinstance(answer, InvalidCredentials), answer
    assert answer.message == message
    assert answer.status == 401


def test_a_link_the_scheme_signs_is_accepted_until_it_expires() -> None:
    clock = clock_at()
    scheme = build(clock=clock)
    link = scheme.sign("/pub/cat 1.png", 60)
    assert link.kid == "new" and link.expires == int(NOW) + 60
    answer = result(scheme, link.url)
    assert answer == Identity(None, {"kid": "new", "expires": int(NOW) + 60}, "signed_url")
    assert isinstance(result(scheme, link.url, method="HEAD"), Identity)  # GET links serve HEAD
    clock.advance(59.9)
    assert isinstance(result(scheme, link.url), Identity)
    clock.advance(0.1)
    refused(scheme, link.url, "link expired")


def test_a_link_signed_with_an_expiry_in_the_past_is_refused() -> None:
    link = sign_link(NEW.encode(), "/pub/k", int(NOW) - 1, kid="new")
    refused(build(), link.url, "link expired")


def test_tampering_is_refused() -> None:
    scheme = build()
    url = scheme.sign("/pub/k", 60).url
    refused(scheme, url.replace("/pub/k", "/pub/other"), "invalid link signature")
    expires = str(int(NOW) + 60)
    refused(scheme, url.replace(expires, str(int(NOW) + 600)), "invalid link signature")
    query = parse_qs(urlsplit(url).query)
    sig = query["signature"][0]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused(scheme, url.replace(sig, flipped), "invalid link signature")
    refused(scheme, url.replace("kid=new", "kid=old"), "invalid link signature")
    refused(scheme, url.replace("kid=new", "kid=gone"), "unknown key id")
    refused(scheme, url.replace("kid=new&", ""), "invalid link signature")
    refused(scheme, url, "invalid link signature", method="OPTIONS")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("expires=1&expires=2&signature=x", "malformed signed link (expires given twice)"),
        ("signature=x", "malformed signed link (no expires)"),
        ("expires=soon&signature=x", "malformed signed link (expires is not unix seconds)"),
        ("expires=-1&signature=x", "malformed signed link (expires is not unix seconds)"),
        ("expires=1&signature=a.b", "malformed signed link (signature)"),
        ("expires=1&bind=everything&signature=x", "malformed signed link (unknown bind)"),
        ("expires=1&signature=", "malformed signed link (signature)"),
    ],
)
def test_malformed_links(query: str, message: str) -> None:
    refused(build(), f"/pub/k?{query}", message)


def test_no_signature_is_no_credentials() -> None:
    scheme = build()
    request = request_for("/pub/k?expires=1")
    assert not scheme.applies(request)
    answer = outcome(scheme.authenticate(request))
    assert isinstance(answer, AuthenticationRequired)
    assert scheme.authenticate_now(request) is None
    assert scheme.applies(request_for("/pub/k?signature=x"))


def test_kid_rotation_and_links_without_kid() -> None:
    scheme = build()
    old = sign_link(OLD.encode(), "/pub/k", int(NOW) + 60, kid="old")
    assert isinstance(result(scheme, old.url), Identity)
    anonymous = sign_link(OLD.encode(), "/pub/k", int(NOW) + 60)  # no kid: every key is tried
    answer = result(scheme, anonymous.url)
    assert isinstance(answer, Identity) and answer.claims["kid"] is None
    rotated = build({"keys": [{"kid": "new", "secret": NEW}]})
    refused(rotated, old.url, "unknown key id")
    refused(rotated, anonymous.url, "invalid link signature")


def test_client_ip_binding() -> None:
    scheme = build()
    bound = scheme.sign("/pub/k", 60, client_ip="192.0.2.7").url
    assert "bind=ip" in bound and "192.0.2.7" not in bound
    assert isinstance(result(scheme, bound, client_ip="192.0.2.7"), Identity)
    refused(scheme, bound, "invalid link signature", client_ip="192.0.2.8")
    refused(scheme, bound.replace("&bind=ip", ""), "invalid link signature", client_ip="192.0.2.7")


def test_lifetime_limits() -> None:
    scheme = build({**SETTINGS, "max_lifetime_seconds": 100})
    with pytest.raises(ValueError, match="1 to 100 seconds"):
        scheme.sign("/pub/k", 101)
    with pytest.raises(ValueError, match="1 to 100 seconds"):
        scheme.sign("/pub/k", 0)
    far = sign_link(NEW.encode(), "/pub/k", int(NOW) + 101, kid="new")
    refused(scheme, far.url, "link lifetime exceeds max_lifetime_seconds")


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({}, "auth.signed_url.keys"),
        ({"keys": []}, "auth.signed_url.keys"),
        ({"keys": [{"secret": "short"}]}, "auth.signed_url.keys[0].secret"),
        ({"keys": [{"kid": "a b", "secret": NEW}]}, "auth.signed_url.keys[0].kid"),
        ({"keys": [{"kid": "a", "secret": NEW}, {"kid": "a", "secret": OLD}]},
         "auth.signed_url.keys[1].kid"),
        ({**SETTINGS, "max_lifetime_seconds": 0}, "auth.signed_url.max_lifetime_seconds"),
        ({**SETTINGS, "max_lifetme_seconds": 1}, "auth.signed_url.max_lifetme_seconds"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_key(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(settings)
    assert info.value.path == path
    assert NEW not in str(info.value) and OLD not in str(info.value)


def test_secrets_are_not_in_the_settings_repr() -> None:
    assert NEW not in repr(signed_url_settings(SETTINGS, "auth.signed_url"))


@settings(max_examples=200, deadline=None)
@given(
    key=st.text(min_size=1).map(lambda s: "/pub/" + s),
    lifetime=st.integers(min_value=1, max_value=7 * 24 * 3600),
)
def test_every_link_the_scheme_signs_verifies_as_a_client_sends_it(key: str, lifetime: int) -> None:
    scheme = build()
    link = scheme.sign(key, lifetime)
    # what a client sends: the link's path, percent-encoded (twisted.web keeps request.path raw)
    assert all(33 <= ord(c) < 127 for c in link.url)
    assert isinstance(result(scheme, link.url), Identity)
    assert isinstance(result(scheme, link.url, method="HEAD"), Identity)
