"""Tests for yatagarasu.s3.sigv4, using botocore's S3SigV4Auth as an oracle.

botocore is only imported here, never by the module under test.  Its clock is
frozen by patching ``botocore.auth.get_current_datetime`` (botocore >= 1.31
reads the time through that helper; patching ``botocore.auth.datetime`` no
longer has any effect), and every oracle call asserts the frozen timestamp was
actually used, so a patch that silently stops working fails loudly.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from unittest import mock
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from yatagarasu.s3 import sigv4
from yatagarasu.s3.sigv4 import (
    EMPTY_PAYLOAD_SHA256,
    UNSIGNED_PAYLOAD,
    Credentials,
    SigV4Signer,
    canonical_request,
    derive_signing_key,
    encode_key,
    string_to_sign,
)

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+token=="

DAY1 = datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC)
DAY2 = datetime(2024, 3, 1, 0, 0, 3, tzinfo=UTC)

KEYS = [
    "plain.txt",
    "with space.txt",
    "a+b.txt",
    "k=v&x=y",
    "100%.txt",
    "%2F-already-looks-encoded",
    "ñ/日本語.txt",
    "emoji-😀.png",
    "tilde~file",
    "dir/sub/dir/file.bin",
    "a//b",
    "/leading-slash",
    "trailing/",
    "a/./b/../c",
    "quote'\"bang!star*(paren),semi;colon:at@",
    "tab\there\nnewline",
    "?#[]",
    "k" * 1024,
    "ñ日" * 200,
]

ADDRESSING = {
    # name: (scheme, region, host, path template)
    "virtual-host": ("https", "us-west-2", "bucket.s3.us-west-2.amazonaws.com", "/{key}"),
    "path-style-port": ("http", "us-east-1", "127.0.0.1:9000", "/bucket/{key}"),
}


def _creds(token: str | None) -> Credentials:
    return Credentials(ACCESS_KEY, SECRET_KEY, token)


def botocore_sign(
    method: str,
    url: str,
    now: datetime,
    region: str,
    token: str | None,
    payload_hash: str = EMPTY_PAYLOAD_SHA256,
    body: bytes = b"",
) -> dict[str, str]:
    """Sign with botocore's S3SigV4Auth at a fixed time; return its final headers.

    botocore's S3 signer always overwrites ``X-Amz-Content-SHA256`` with its own
    idea of the payload hash (sha256 of the body, or UNSIGNED-PAYLOAD when
    payload signing is disabled in the client config), so we set the header
    *and* steer botocore to the same value, then assert it really used it.
    """
    request = AWSRequest(method=method, url=url, data=body)
    request.headers["X-Amz-Content-SHA256"] = payload_hash
    if payload_hash == UNSIGNED_PAYLOAD:
        request.context["client_config"] = SimpleNamespace(s3={"payload_signing_enabled": False})
    auth = S3SigV4Auth(BotoCredentials(ACCESS_KEY, SECRET_KEY, token), "s3", region)
    naive_utc = now.astimezone(UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=naive_utc):
        auth.add_auth(request)
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["x-amz-date"] == naive_utc.strftime("%Y%m%dT%H%M%SZ")
    assert headers["x-amz-content-sha256"] == payload_hash
    return headers


def ours(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    assert all(name == name.lower() for name, _ in headers)
    result = {name.decode(): value.decode() for name, value in headers}
    assert len(result) == len(headers), "duplicate header names"
    return result


def assert_same_as_botocore(mine: dict[str, str], theirs: dict[str, str]) -> None:
    assert mine["authorization"] == theirs["authorization"]
    assert mine["x-amz-date"] == theirs["x-amz-date"]
    assert mine["x-amz-content-sha256"] == theirs["x-amz-content-sha256"]
    assert mine.get("x-amz-security-token") == theirs.get("x-amz-security-token")


# --------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("token", [None, SESSION_TOKEN], ids=["no-token", "token"])
@pytest.mark.parametrize("addressing", sorted(ADDRESSING))
@pytest.mark.parametrize("key", KEYS, ids=lambda k: repr(k[:24]))
def test_get_matches_botocore(key: str, addressing: str, token: str | None) -> None:
    scheme, region, host, template = ADDRESSING[addressing]
    path = template.format(key=encode_key(key))
    mine = ours(SigV4Signer(_creds(token), region).sign("GET", host, path, DAY1))
    theirs = botocore_sign("GET", f"{scheme}://{host}{path}", DAY1, region, token)
    assert_same_as_botocore(mine, theirs)
    assert mine["host"] == host


@pytest.mark.parametrize("token", [None, SESSION_TOKEN], ids=["no-token", "token"])
@pytest.mark.parametrize("addressing", sorted(ADDRESSING))
def test_head_is_signed_as_head(addressing: str, token: str | None) -> None:
    scheme, region, host, template = ADDRESSING[addressing]
    path = template.format(key=encode_key("reports/2024 Q1.csv"))
    signer = SigV4Signer(_creds(token), region)
    head = ours(signer.sign("HEAD", host, path, DAY1))
    get = ours(signer.sign("GET", host, path, DAY1))
    theirs = botocore_sign("HEAD", f"{scheme}://{host}{path}", DAY1, region, token)
    assert_same_as_botocore(head, theirs)
    assert head["authorization"] != get["authorization"]


@pytest.mark.parametrize(
    "query",
    ["versionId=3HL4kqtJlcpXroDTDmJ%2Bg.e0Fo", "partNumber=2&versionId=abc", "acl=", "uploads="],
)
def test_query_string_matches_botocore(query: str) -> None:
    scheme, region, host, template = ADDRESSING["virtual-host"]
    path = template.format(key="file.txt")
    mine = ours(SigV4Signer(_creds(None), region).sign("GET", host, path, DAY1, query=query))
    theirs = botocore_sign("GET", f"{scheme}://{host}{path}?{query}", DAY1, region, None)
    assert_same_as_botocore(mine, theirs)
    no_query = ours(SigV4Signer(_creds(None), region).sign("GET", host, path, DAY1))
    assert mine["authorization"] != no_query["authorization"]


@pytest.mark.parametrize("token", [None, SESSION_TOKEN], ids=["no-token", "token"])
def test_unsigned_payload_matches_botocore(token: str | None) -> None:
    scheme, region, host, template = ADDRESSING["virtual-host"]
    path = template.format(key="big.iso")
    signer = SigV4Signer(_creds(token), region)
    mine = ours(signer.sign("GET", host, path, DAY1, payload_hash=UNSIGNED_PAYLOAD))
    theirs = botocore_sign(
        "GET", f"{scheme}://{host}{path}", DAY1, region, token, payload_hash=UNSIGNED_PAYLOAD
    )
    assert_same_as_botocore(mine, theirs)
    assert mine["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_body_payload_hash_matches_botocore() -> None:
    body = b"<Delete><Object><Key>x</Key></Object></Delete>"
    payload_hash = hashlib.sha256(body).hexdigest()
    scheme, region, host, _ = ADDRESSING["path-style-port"]
    path, query = "/bucket", "delete="
    signer = SigV4Signer(_creds(None), region)
    mine = ours(signer.sign("POST", host, path, DAY1, query=query, payload_hash=payload_hash))
    theirs = botocore_sign(
        "POST", f"{scheme}://{host}{path}?{query}", DAY1, region, None, payload_hash, body
    )
    assert_same_as_botocore(mine, theirs)


def test_bucket_root_path_matches_botocore() -> None:
    scheme, region, host, _ = ADDRESSING["virtual-host"]
    mine = ours(SigV4Signer(_creds(None), region).sign("GET", host, "/", DAY1, query="list-type=2"))
    theirs = botocore_sign("GET", f"{scheme}://{host}/?list-type=2", DAY1, region, None)
    assert_same_as_botocore(mine, theirs)


# --------------------------------------------------------------------------- dates / cache


@pytest.mark.parametrize("token", [None, SESSION_TOKEN], ids=["no-token", "token"])
def test_signing_key_cache_does_not_leak_across_dates(token: str | None) -> None:
    scheme, region, host, template = ADDRESSING["path-style-port"]
    path = template.format(key="k.txt")
    url = f"{scheme}://{host}{path}"
    signer = SigV4Signer(_creds(token), region)

    day1 = ours(signer.sign("GET", host, path, DAY1))
    day2 = ours(signer.sign("GET", host, path, DAY2))
    fresh_day2 = ours(SigV4Signer(_creds(token), region).sign("GET", host, path, DAY2))
    day1_again = ours(signer.sign("GET", host, path, DAY1))

    assert day2 == fresh_day2
    assert day1_again == day1
    assert "/20240229/" in day1["authorization"]
    assert "/20240301/" in day2["authorization"]
    assert_same_as_botocore(day1, botocore_sign("GET", url, DAY1, region, token))
    assert_same_as_botocore(day2, botocore_sign("GET", url, DAY2, region, token))


def test_signing_key_derived_once_per_date() -> None:
    signer = SigV4Signer(_creds(None), "us-east-1")
    with mock.patch.object(sigv4, "derive_signing_key", wraps=sigv4.derive_signing_key) as derive:
        for seconds in range(5):
            signer.sign("GET", "h", "/b/k", DAY1 - timedelta(seconds=seconds))
        assert derive.call_count == 1
        signer.sign("GET", "h", "/b/k", DAY2)
        signer.sign("GET", "h", "/b/k", DAY2 + timedelta(hours=1))
        assert derive.call_count == 2
    assert derive.call_args_list == [
        mock.call(SECRET_KEY, "20240229", "us-east-1", "s3"),
        mock.call(SECRET_KEY, "20240301", "us-east-1", "s3"),
    ]


def test_now_is_converted_to_utc() -> None:
    signer = SigV4Signer(_creds(None), "eu-west-1")
    tokyo = DAY2.astimezone(timezone(timedelta(hours=9)))
    naive_utc = DAY2.replace(tzinfo=None)
    reference = ours(signer.sign("GET", "h", "/b/k", DAY2))
    assert ours(signer.sign("GET", "h", "/b/k", tokyo)) == reference
    assert ours(signer.sign("GET", "h", "/b/k", naive_utc)) == reference
    assert reference["x-amz-date"] == "20240301T000003Z"
    # Non-UTC local date differs from the UTC date: the scope must use the UTC one.
    behind = DAY2.astimezone(timezone(timedelta(hours=-5)))
    assert behind.day == 29
    assert ours(signer.sign("GET", "h", "/b/k", behind)) == reference


# --------------------------------------------------------------------------- header shape


def test_returned_headers_without_token() -> None:
    headers = SigV4Signer(_creds(None), "us-east-1").sign("GET", "h:9000", "/b/k", DAY1)
    assert [name for name, _ in headers] == [
        b"host",
        b"x-amz-date",
        b"x-amz-content-sha256",
        b"authorization",
    ]
    assert all(isinstance(v, bytes) for _, v in headers)
    values = dict(headers)
    assert values[b"host"] == b"h:9000"
    assert values[b"x-amz-date"] == b"20240229T235958Z"
    assert values[b"x-amz-content-sha256"] == EMPTY_PAYLOAD_SHA256.encode()
    assert values[b"authorization"].startswith(
        b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240229/us-east-1/s3/aws4_request, "
        b"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
    )


def test_returned_headers_with_token() -> None:
    headers = SigV4Signer(_creds(SESSION_TOKEN), "us-east-1").sign("GET", "h", "/b/k", DAY1)
    assert [name for name, _ in headers] == [
        b"host",
        b"x-amz-date",
        b"x-amz-content-sha256",
        b"x-amz-security-token",
        b"authorization",
    ]
    values = dict(headers)
    assert values[b"x-amz-security-token"] == SESSION_TOKEN.encode()
    assert (
        b"SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "
        in values[b"authorization"]
    )


def test_empty_session_token_is_no_token() -> None:
    with_empty = SigV4Signer(_creds(""), "us-east-1").sign("GET", "h", "/b/k", DAY1)
    without = SigV4Signer(_creds(None), "us-east-1").sign("GET", "h", "/b/k", DAY1)
    assert with_empty == without
    theirs = botocore_sign("GET", "https://h/b/k", DAY1, "us-east-1", "")
    assert_same_as_botocore(ours(with_empty), theirs)


def test_sign_agrees_with_pure_functions() -> None:
    creds = _creds(SESSION_TOKEN)
    host, path, query = "bucket.s3.ap-northeast-1.amazonaws.com", "/a%20b/c.txt", "versionId=1"
    mine = ours(SigV4Signer(creds, "ap-northeast-1").sign("GET", host, path, DAY1, query))
    signed = "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
    creq = canonical_request(
        "GET",
        path,
        query,
        [
            ("x-amz-security-token", SESSION_TOKEN),
            ("Host", host),
            ("x-amz-date", "20240229T235958Z"),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
        ],
        signed,
        EMPTY_PAYLOAD_SHA256,
    )
    scope = "20240229/ap-northeast-1/s3/aws4_request"
    sts = string_to_sign("20240229T235958Z", scope, creq)
    key = derive_signing_key(SECRET_KEY, "20240229", "ap-northeast-1", "s3")
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    assert mine["authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


def test_different_secret_or_region_changes_signature() -> None:
    base = ours(SigV4Signer(_creds(None), "us-east-1").sign("GET", "h", "/b/k", DAY1))
    other_secret = Credentials(ACCESS_KEY, SECRET_KEY + "x")
    assert (
        ours(SigV4Signer(other_secret, "us-east-1").sign("GET", "h", "/b/k", DAY1))["authorization"]
        != base["authorization"]
    )
    other_region = ours(SigV4Signer(_creds(None), "us-east-2").sign("GET", "h", "/b/k", DAY1))
    assert other_region["authorization"] != base["authorization"]


# --------------------------------------------------------------------------- pure functions


def test_aws_published_get_object_example() -> None:
    """The "GET Object" example from the S3 SigV4 header-auth documentation."""
    amz_date = "20130524T000000Z"
    signed = "host;range;x-amz-content-sha256;x-amz-date"
    creq = canonical_request(
        "GET",
        "/" + encode_key("test.txt"),
        "",
        [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256),
            ("x-amz-date", amz_date),
        ],
        signed,
        EMPTY_PAYLOAD_SHA256,
    )
    assert creq == (
        "GET\n"
        "/test.txt\n"
        "\n"
        "host:examplebucket.s3.amazonaws.com\n"
        "range:bytes=0-9\n"
        "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        "x-amz-date:20130524T000000Z\n"
        "\n"
        "host;range;x-amz-content-sha256;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    sts = string_to_sign(amz_date, "20130524/us-east-1/s3/aws4_request", creq)
    assert sts == (
        "AWS4-HMAC-SHA256\n"
        "20130524T000000Z\n"
        "20130524/us-east-1/s3/aws4_request\n"
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )
    key = derive_signing_key(
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3"
    )
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    assert signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_aws_published_signing_key_example() -> None:
    """The "derive a signing key" example from the AWS general reference."""
    key = derive_signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam"
    )
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_canonical_request_canonicalises_headers() -> None:
    creq = canonical_request(
        "GET",
        "/b/k",
        "a=1&b=2",
        [
            ("X-Amz-Meta-B", "  two   words\t here  "),
            ("host", "h"),
            ("x-amz-meta-a", "first"),
            ("X-AMZ-META-A", "second"),
        ],
        "host;x-amz-meta-a;x-amz-meta-b",
        UNSIGNED_PAYLOAD,
    )
    assert creq == (
        "GET\n/b/k\na=1&b=2\n"
        "host:h\n"
        "x-amz-meta-a:first,second\n"
        "x-amz-meta-b:two words here\n"
        "\n"
        "host;x-amz-meta-a;x-amz-meta-b\n"
        "UNSIGNED-PAYLOAD"
    )


def test_canonical_request_empty_path_is_root() -> None:
    creq = canonical_request("GET", "", "", [("host", "h")], "host", EMPTY_PAYLOAD_SHA256)
    assert creq.split("\n")[1] == "/"


def test_empty_payload_constant() -> None:
    assert EMPTY_PAYLOAD_SHA256 == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert UNSIGNED_PAYLOAD == "UNSIGNED-PAYLOAD"


def test_credentials_repr_hides_secrets() -> None:
    text = repr(_creds(SESSION_TOKEN))
    assert ACCESS_KEY in text
    assert SECRET_KEY not in text
    assert SESSION_TOKEN not in text


# --------------------------------------------------------------------------- encode_key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("plain.txt", "plain.txt"),
        ("", ""),
        ("with space.txt", "with%20space.txt"),
        ("a+b", "a%2Bb"),
        ("k=v&x=y", "k%3Dv%26x%3Dy"),
        ("100%", "100%25"),
        ("%2F", "%252F"),
        ("ñ/日本語.txt", "%C3%B1/%E6%97%A5%E6%9C%AC%E8%AA%9E.txt"),
        ("😀", "%F0%9F%98%80"),
        ("tilde~-._", "tilde~-._"),
        ("a/b/c", "a/b/c"),
        ("a//b", "a//b"),
        ("/x/", "/x/"),
        ("./..", "./.."),
        ("?#[]@!$'()*,;:", "%3F%23%5B%5D%40%21%24%27%28%29%2A%2C%3B%3A"),
        ('"<>\\^`{|}', "%22%3C%3E%5C%5E%60%7B%7C%7D"),
        ("\x00\t\n\x7f", "%00%09%0A%7F"),
        ("AZaz09", "AZaz09"),
    ],
)
def test_encode_key_table(key: str, expected: str) -> None:
    assert encode_key(key) == expected
    assert encode_key(key) == quote(key, safe="/~")


def test_encode_key_matches_quote_for_every_bmp_char_and_random_keys() -> None:
    for code_point in range(0x10000):
        if 0xD800 <= code_point <= 0xDFFF:
            continue  # lone surrogates are not encodable as UTF-8
        ch = chr(code_point)
        assert encode_key(ch) == quote(ch, safe="/~"), hex(code_point)
    rng = random.Random(20240229)
    alphabet = [chr(c) for c in range(0x20, 0x80)] + list("ñé日本語😀\x00\t/")
    for _ in range(2000):
        key = "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        assert encode_key(key) == quote(key, safe="/~"), repr(key)


def test_encode_key_uses_uppercase_hex() -> None:
    encoded = encode_key("ÿ\xab")
    assert encoded == "%C3%BF%C2%AB"
    assert encoded == encoded.upper()


def test_encode_key_rejects_lone_surrogates() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_key("bad\udc80")
