"""``yatagarasu-sign-url`` (yatagarasu.sign_url_command): the links verify with the scheme."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.unit.auth.jwt_kit import NOW, clock_at, outcome
from yatagarasu.auth.signed_url import SignedUrlSchemeFactory
from yatagarasu.sign_url_command import main
from yatagarasu.testing.requests import fake_request
from yatagarasu.values import Identity

KEY = "c" * 32


def run(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), now=lambda: NOW + 0.7, environ=environ or {}, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def verifies(url: str, *, now: float = NOW, client_ip: str = "127.0.0.1") -> bool:
    scheme = SignedUrlSchemeFactory().build(
        {"keys": [{"kid": "k1", "secret": KEY}]}, "auth.signed_url", clock_at(now)
    )
    parts = urlsplit(url)
    request = fake_request(parts.path, args=parse_qs(parts.query), client_ip=client_ip)
    return isinstance(outcome(scheme.authenticate(request)), Identity)


def test_the_printed_link_verifies_for_its_lifetime() -> None:
    status, out, err = run("--key", KEY, "--kid", "k1", "--expires-in", "30", "/pub/cat 1.png")
    assert (status, err) == (0, "")
    url = out.strip()
    assert url.startswith(f"/pub/cat%201.png?kid=k1&expires={int(NOW) + 30}&")
    assert verifies(url) and verifies(url, now=NOW + 29.9)
    assert not verifies(url, now=NOW + 30)


def test_key_from_the_environment_base_url_and_ip_binding() -> None:
    status, out, _ = run(
        "--key-env", "SIGNING_KEY", "--client-ip", "192.0.2.4", "--base-url",
        "http://127.0.0.1:8080/", "/pub/k",
        environ={"SIGNING_KEY": KEY},
    )  # fmt: skip
    assert status == 0
    url = out.strip()
    assert url.startswith("http://127.0.0.1:8080/pub/k?expires=")
    relative = url.removeprefix("http://127.0.0.1:8080")
    assert verifies(relative, client_ip="192.0.2.4")
    assert not verifies(relative, client_ip="192.0.2.5")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--key", "short", "/pub/k"), "the key must be at least 32 bytes"),
        (("--key", KEY, "pub/k"), "the path must start with /"),
        (("--key", KEY, "--expires-in", "0", "/pub/k"), "--expires-in must be > 0"),
        (("--key-env", "NOPE", "/pub/k"), "$NOPE is not set"),
    ],
)
def test_refusals_exit_1(argv: tuple[str, ...], message: str) -> None:
    status, out, err = run(*argv)
    assert (status, out) == (1, "")
    assert err == f"yatagarasu-sign-url: {message}\n"


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        run("/pub/k")  # no key
    assert info.value.code == 2
