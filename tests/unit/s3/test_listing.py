"""ListObjectsV2: the signed query, the bounded and entity-free parse (yatagarasu.s3.listing)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.unit.fakes import FakeResponse
from tests.unit.s3.test_sigv4 import (
    ACCESS_KEY,
    ADDRESSING,
    DAY1,
    SECRET_KEY,
    assert_same_as_botocore,
    botocore_sign,
    ours,
)
from yatagarasu.errors import UpstreamError
from yatagarasu.s3 import listing
from yatagarasu.s3.listing import ListedObject, list_query, parse_list_page, read_list_page
from yatagarasu.s3.sigv4 import Credentials, SigV4Signer

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def page_document(*parts: str, ns: bool = True, truncated: str | None = None) -> bytes:
    xmlns = f' xmlns="{NS}"' if ns else ""
    more = (
        f"<IsTruncated>true</IsTruncated><NextContinuationToken>{truncated}</NextContinuationToken>"
        if truncated is not None
        else "<IsTruncated>false</IsTruncated>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult{xmlns}><Name>b</Name>'
        f"<Prefix>docs/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
        f"<Delimiter>/</Delimiter>{more}{''.join(parts)}</ListBucketResult>"
    ).encode()


def contents(key: str, size: int = 5, etag: str = "&quot;e1&quot;") -> str:
    return (
        f"<Contents><Key>{key}</Key><LastModified>2026-12-02T07:43:12.000Z</LastModified>"
        f"<ETag>{etag}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
    )


@pytest.mark.parametrize("token", [None, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="])
@pytest.mark.parametrize("prefix", ["", "docs/", "a b/ñ+&=?#%/"])
def test_the_query_is_signed_as_botocore_signs_it(prefix: str, token: str | None) -> None:
    scheme, region, host, template = ADDRESSING["path-style-port"]
    path = template.format(key="")
    query = list_query(prefix, 1000, token)
    mine = ours(
        SigV4Signer(Credentials(ACCESS_KEY, SECRET_KEY), region).sign(
            "GET", host, path, DAY1, query=query
        )
    )
    theirs = botocore_sign("GET", f"{scheme}://{host}{path}?{query}", DAY1, region, None)
    assert_same_as_botocore(mine, theirs)
    names = [part.partition("=")[0] for part in query.split("&")]
    assert names == sorted(names)
    assert "delimiter=%2F" in query and "list-type=2" in query and "max-keys=1000" in query
    assert ("continuation-token=" in query) is (token is not None)


@pytest.mark.parametrize("ns", [True, False])
def test_a_page_is_parsed_with_or_without_the_namespace(ns: bool) -> None:
    body = page_document(
        contents("docs/a&amp;b.txt", 7),
        contents("docs/&lt;script&gt;.txt", 0),
        "<CommonPrefixes><Prefix>docs/sub/</Prefix></CommonPrefixes>",
        ns=ns,
        truncated="tok+/=",
    )
    page = parse_list_page(body, "ignored/")
    assert page.prefix == "docs/"
    assert page.objects == (
        ListedObject("docs/a&b.txt", 7, '"e1"', "2026-12-02T07:43:12.000Z"),
        ListedObject("docs/<script>.txt", 0, '"e1"', "2026-12-02T07:43:12.000Z"),
    )
    assert page.prefixes == ("docs/sub/",)
    assert page.next_token == "tok+/=" and not page.empty


def test_an_empty_last_page() -> None:
    page = parse_list_page(page_document(), "docs/")
    assert page.empty and page.next_token is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ListBucketResult>'
            b"<Prefix>&a;</Prefix></ListBucketResult>",
            "document type declaration",
        ),
        (b"<ListBucketResult><Contents>", "not well-formed"),
        (b"<Error><Code>AccessDenied</Code></Error>", "a Error document"),
        (page_document(contents("k", 1).replace("<Size>1</Size>", "<Size>-1</Size>")), "size"),
        (page_document(truncated=""), "no continuation token"),
    ],
)
def test_what_is_not_a_listing_is_a_502(body: bytes, message: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        parse_list_page(body, "")
    assert raised.value.status == 502 and message in raised.value.message


def _read(response: FakeResponse, clock: Clock, timeout: float = 5) -> Deferred[Any]:
    return Deferred.fromCoroutine(read_list_page(response, "docs/", clock, timeout))


def test_the_body_is_read_whole_then_parsed() -> None:
    response = FakeResponse(200, body=None)
    reading = _read(response, Clock())
    body = page_document(contents("docs/x", 3))
    response.push(body[:10])
    assert not reading.called
    response.push(body[10:])
    response.end()
    pages: list[Any] = []
    reading.addCallback(pages.append)
    assert [o.key for o in pages[0].objects] == ["docs/x"]


def test_a_larger_body_is_refused_not_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "MAX_LISTING_BYTES", 100)
    response = FakeResponse(200, body=page_document(contents("docs/x" * 20)))
    errors: list[Any] = []
    _read(response, Clock()).addErrback(errors.append)
    assert errors[0].value.status == 502 and "larger than 100 bytes" in errors[0].value.message
    assert response.transport.stopped


def test_a_stalled_body_times_out_on_the_clock() -> None:
    clock = Clock()
    response = FakeResponse(200, body=None)
    errors: list[Any] = []
    _read(response, clock, timeout=3).addErrback(errors.append)
    response.push(b"<ListBucketResult>")
    clock.advance(2.9)
    assert not errors
    clock.advance(0.2)
    assert errors[0].value.status == 504 and errors[0].value.retryable
