"""Several schemes on a bucket (``auth.schemes``): the first that applies decides."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.iweb import IRequest
from zope.interface import implementer

from tests.unit.auth.jwt_kit import SECRET, clock_at, outcome, scheme, token
from yatagarasu.auth.first_applicable import FirstApplicableScheme
from yatagarasu.auth.signed_url import SignedUrlSchemeFactory
from yatagarasu.errors import AuthenticationRequired, InvalidCredentials
from yatagarasu.interfaces import IAuthScheme
from yatagarasu.testing.requests import fake_request
from yatagarasu.values import Identity

KEY = "k" * 32


@implementer(IAuthScheme)
class HeaderKey:
    """A scheme that cannot tell whether it applies (like a third party's)."""

    name = "headerkey"

    def __init__(self) -> None:
        self.asked = 0

    def authenticate(self, request: IRequest) -> Deferred[Identity]:
        self.asked += 1
        value = request.getHeader(b"x-key")
        if value is None:
            return fail(AuthenticationRequired("x-key required"))
        if value != b"right":
            return fail(InvalidCredentials("wrong x-key"))
        return succeed(Identity("keyholder", {}, "headerkey"))

    def services(self) -> list[IService]:
        return []


def schemes(*extra: Any) -> tuple[Any, Any, Any]:
    clock = clock_at()
    jwt_scheme = scheme({"secret": SECRET}, clock)
    signed = SignedUrlSchemeFactory().build({"keys": [{"secret": KEY}]}, "auth", clock)
    return jwt_scheme, signed, FirstApplicableScheme([*extra, jwt_scheme, signed])


def request(url: str = "/pub/k", **headers: str) -> Any:
    parts = urlsplit(url)
    names = {name.replace("_", "-"): value for name, value in headers.items()}
    return fake_request(parts.path, headers=names, args=parse_qs(parts.query))


def test_each_kind_of_credentials_is_accepted() -> None:
    _, signed, both = schemes()
    assert both.name == "jwt+signed_url"
    by_token = outcome(both.authenticate(request(Authorization=f"Bearer {token(SECRET, 'HS256')}")))
    assert isinstance(by_token, Identity) and by_token.scheme == "jwt"
    link = signed.sign("/pub/k", 60).url
    by_link = outcome(both.authenticate(request(link)))
    assert isinstance(by_link, Identity) and by_link.scheme == "signed_url"
    assert both.applies(request(link)) and not both.applies(request())


def test_no_credentials_is_one_challenge() -> None:
    _, _, both = schemes()
    answer = outcome(both.authenticate(request()))
    assert isinstance(answer, AuthenticationRequired)
    assert answer.message == "credentials are required (jwt or signed_url)"
    assert both.authenticate_now(request()) is None


def test_present_but_bad_credentials_are_not_passed_on() -> None:
    _, signed, both = schemes()
    link = signed.sign("/pub/k", 60).url
    bad_token_good_link = request(link, Authorization="Bearer garbage")
    answer = outcome(both.authenticate(bad_token_good_link))
    assert isinstance(answer, InvalidCredentials) and answer.message == "malformed token"
    assert both.authenticate_now(bad_token_good_link) is None
    tampered = outcome(both.authenticate(request(link.replace("/pub/k", "/pub/j"))))
    assert isinstance(tampered, InvalidCredentials)


def test_the_fast_path_answers_for_the_scheme_that_applies() -> None:
    jwt_scheme, signed, both = schemes()
    tok = token(SECRET, "HS256")
    with_token = request(Authorization=f"Bearer {tok}")
    assert both.authenticate_now(with_token) is None  # not verified yet
    assert isinstance(outcome(jwt_scheme.authenticate(with_token)), Identity)
    known = both.authenticate_now(with_token)
    assert known is not None and known.scheme == "jwt"
    link = request(signed.sign("/pub/k", 60).url)
    now = both.authenticate_now(link)
    assert now is not None and now.scheme == "signed_url"


def test_a_scheme_that_cannot_tell_is_asked_and_passed_over_without_credentials() -> None:
    other = HeaderKey()
    _, signed, all_three = schemes(other)
    link = signed.sign("/pub/k", 60).url
    assert all_three.authenticate_now(request(link)) is None  # HeaderKey comes first
    by_link = outcome(all_three.authenticate(request(link)))
    assert isinstance(by_link, Identity) and by_link.scheme == "signed_url"
    wrong = outcome(all_three.authenticate(request(link, x_key="wrong")))
    assert isinstance(wrong, InvalidCredentials) and wrong.message == "wrong x-key"
    right = outcome(all_three.authenticate(request(x_key="right")))
    assert isinstance(right, Identity) and right.subject == "keyholder"
    nothing = outcome(all_three.authenticate(request()))
    assert isinstance(nothing, AuthenticationRequired)
    assert nothing.message == "credentials are required (headerkey or jwt or signed_url)"
    assert other.asked == 4
