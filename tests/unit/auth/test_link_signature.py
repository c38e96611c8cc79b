"""The one signing function (yatagarasu.auth.link_signature): normal forms, what is signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

import pytest

from yatagarasu.auth.link_signature import normal_ip, normal_path, sign_link, signature

KEY = b"k" * 32


def test_the_signature_is_the_documented_hmac() -> None:
    message = b"yatagarasu-signed-url-v1\nGET\n/b/cat%201.png\n1800000000\nk1\n10.0.0.1"
    expected = hmac.new(KEY, message, hashlib.sha256).digest()
    got = signature(KEY, "get", "/b/cat 1.png", 1_800_000_000, "k1", "::ffff:10.0.0.1")
    assert base64.urlsafe_b64decode(got + "=") == expected


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/b/cat 1.png", "/b/cat%201.png"),
        ("/b/cat%201.png", "/b/cat%201.png"),
        ("/b/a%2Fb", "/b/a/b"),
        ("/b/%E3%81%82", "/b/%E3%81%82"),
        ("/b/\u3042", "/b/%E3%81%82"),
        ("/b/line%0Abreak", "/b/line%0Abreak"),
        ("/b/~x-y_z.(1)", "/b/~x-y_z.(1)"),
    ],
)
def test_normal_path(path: str, normal: str) -> None:
    assert normal_path(path) == normal
    assert normal_path(path.encode("utf-8")) == normal


def test_normal_ip() -> None:
    assert normal_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert normal_ip("2001:0db8:0000::1") == "2001:db8::1"
    assert normal_ip("not an address") == "not an address"


def test_every_signed_field_changes_the_signature() -> None:
    base = ("GET", "/b/k", 100, "k1", None)
    reference = signature(KEY, *base)
    variants = [
        ("HEAD", "/b/k", 100, "k1", None),
        ("GET", "/b/k2", 100, "k1", None),
        ("GET", "/b/k", 101, "k1", None),
        ("GET", "/b/k", 100, "k2", None),
        ("GET", "/b/k", 100, None, None),
        ("GET", "/b/k", 100, "k1", "127.0.0.1"),
    ]
    assert all(signature(KEY, *v) != reference for v in variants)
    assert signature(b"o" * 32, *base) != reference


def test_sign_link_query() -> None:
    link = sign_link(KEY, "/b/cat 1.png", 1234, kid="k1", client_ip="127.0.0.1")
    parts = urlsplit(link.url)
    assert parts.path == "/b/cat%201.png"
    query = parse_qs(parts.query)
    assert query == {
        "kid": ["k1"],
        "expires": ["1234"],
        "bind": ["ip"],
        "signature": [signature(KEY, "GET", "/b/cat 1.png", 1234, "k1", "127.0.0.1")],
    }
    assert (link.expires, link.kid) == (1234, "k1")
    plain = sign_link(KEY, "/b/k", 1234)
    assert set(parse_qs(urlsplit(plain.url).query)) == {"expires", "signature"}


@pytest.mark.parametrize(
    ("key", "path", "kid", "message"),
    [
        (b"short", "/b/k", None, "at least 32 bytes"),
        (KEY, "b/k", None, "must start with /"),
        (KEY, "/b/k", "bad kid!", "key id"),
    ],
)
def test_sign_link_refuses(key: bytes, path: str, kid: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sign_link(key, path, 1, kid=kid)


def test_sign_link_refuses_a_client_address_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="not an IP address: 'banana'"):
        sign_link(KEY, "/b/k", 1, client_ip="banana")
    assert "bind=ip" in sign_link(KEY, "/b/k", 1, client_ip="2001:db8::1").url
