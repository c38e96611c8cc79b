"""
Directory listings, index documents and not-found documents in memory (yatagarasu.web.listing,
yatagarasu.web.bucket): fake S3, the memory cache, the fake clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet.defer import Deferred

from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import FakeResponse, bucket_entry, parse_response
from tests.unit.s3.test_listing import contents, page_document
from yatagarasu.s3.listing import ListedObject, ListPage
from yatagarasu.values import CacheEntry, FileBody
from yatagarasu.web.listing import _entry_body, render_html, render_json

PAGE = ListPage(
    "docs/",
    (
        ListedObject('docs/"><script>alert(1)<.txt', 3, '"e"', "2026-12-02T07:43:12.000Z"),
        ListedObject("docs/", 0, '"d"', "2026-12-02T07:43:12.000Z"),
    ),
    ("docs/<b>/",),
    "token+/=&x",
)


def listing_answer(*parts: str, truncated: str | None = None) -> FakeResponse:
    body = page_document(*parts, truncated=truncated)
    return FakeResponse(200, {"Content-Type": "application/xml"}, body=body)


def not_found() -> FakeResponse:
    return FakeResponse(404, body=b"<Error><Code>NoSuchKey</Code></Error>")


def test_html_escapes_every_key_and_link() -> None:
    text = render_html(PAGE, "/files").decode()
    assert "<script>" not in text and "<b>" not in text
    assert "&quot;&gt;&lt;script&gt;alert(1)&lt;.txt</a>" in text
    assert 'href="/files/docs/%22%3E%3Cscript%3Ealert%281%29%3C.txt"' in text
    assert 'href="/files/docs/%3Cb%3E/">&lt;b&gt;/</a>' in text
    assert 'href="/files/">../</a>' in text
    assert 'rel="next" href="/files/docs/?continuation_token=token%2B%2F%3D%26x"' in text
    assert text.count("<tr>") == 4  # header, parent, one directory, one key (no marker)


def test_json_has_names_sizes_etags_dates_prefixes_and_the_next_token() -> None:
    document = json.loads(render_json(PAGE, "files", ""))
    assert document["bucket"] == "files" and document["prefix"] == "docs/"
    assert document["directories"] == [
        {"name": "<b>/", "prefix": "docs/<b>/", "href": "/docs/%3Cb%3E/"}
    ]
    (listed,) = document["objects"]
    assert listed["name"] == '"><script>alert(1)<.txt'
    assert (listed["size"], listed["etag"]) == (3, '"e"')
    assert listed["last_modified"] == "2026-12-02T07:43:12.000Z"
    assert document["next_continuation_token"] == "token+/=&x"
    assert parse_qs(urlsplit(document["next"]).query) == {"continuation_token": ["token+/=&x"]}


def listing_bucket(**extra: object) -> dict[str, object]:
    return bucket_entry(listing={"enabled": True, "format": "json", "max_keys": 2}, **extra)


def test_a_listing_is_signed_paginated_and_cached_for_its_ttl() -> None:
    h = cached(listing_bucket())
    first = fetch(h, "/pub/docs/", answer=listing_answer(contents("docs/a"), truncated="t/1"))
    assert (first.status, first.header("x-cache")) == (200, "MISS")
    assert first.header("cache-control") == "no-cache"
    sent = h.agents["pub"].sent[0]
    assert sent.uri == (
        b"http://127.0.0.1:9000/pub-bucket/?delimiter=%2F&list-type=2&max-keys=2&prefix=docs%2F"
    )
    assert sent.headers.getRawHeaders(b"authorization")[0].startswith(b"AWS4-HMAC-SHA256")
    document = json.loads(first.body)
    assert document["next"] == "/pub/docs/?continuation_token=t%2F1"
    second = fetch(h, document["next"], answer=listing_answer(contents("docs/b")))
    assert json.loads(second.body)["next"] is None
    assert b"continuation-token=t%2F1&" in h.agents["pub"].sent[1].uri
    h.clock.advance(9)
    hit = fetch(h, "/pub/docs/")
    assert (hit.status, hit.body, hit.header("x-cache")) == (200, first.body, "HIT")
    head = fetch(h, "/pub/docs/", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (
        200,
        b"",
        str(len(first.body)),
    )
    assert len(h.agents["pub"].sent) == 2
    h.clock.advance(2)  # past listing.cache_ttl_seconds (10)
    fetch(h, "/pub/docs/", answer=listing_answer(contents("docs/a")))
    assert len(h.agents["pub"].sent) == 3


def test_listing_refusals_and_s3_errors() -> None:
    h = cached(listing_bucket())
    assert fetch(h, "/pub/docs/?continuation_token=a&continuation_token=b").status == 400
    assert fetch(h, "/pub/docs/?continuation_token=a%20b").status == 400
    assert h.agents["pub"].sent == []
    denied = FakeResponse(403, body=b"<Error><Code>AccessDenied</Code></Error>")
    refused = fetch(h, "/pub/docs/", answer=denied)
    assert refused.status == 403 and json.loads(refused.body)["s3_code"] == "AccessDenied"
    empty = fetch(h, "/pub/nothing/", answer=listing_answer())
    assert empty.status == 404
    top = fetch(h, "/pub", answer=listing_answer())
    assert top.status == 200 and json.loads(top.body)["objects"] == []


def test_without_listing_a_directory_is_a_404_and_s3_is_not_asked() -> None:
    h = cached(bucket_entry())
    response = fetch(h, "/pub/docs/")
    assert response.status == 404
    assert "listing is not enabled" in json.loads(response.body)["message"]
    assert h.agents["pub"].sent == []


def test_the_index_document_comes_before_the_listing() -> None:
    h = cached(listing_bucket(index_document="index.html"))
    index = fetch(h, "/pub/app/", answer=obj(b"<html>app</html>"))
    assert (index.status, index.body) == (200, b"<html>app</html>")
    assert h.agents["pub"].sent[0].uri.endswith(b"/pub-bucket/app/index.html")
    _, transport = h.get("/pub/docs/")
    h.agents["pub"].answer(not_found())
    assert b"list-type=2" in h.agents["pub"].sent[2].uri
    h.agents["pub"].answer(listing_answer(contents("docs/a")))
    listed = parse_response(transport.value())
    assert listed.status == 200 and json.loads(listed.body)["objects"][0]["key"] == "docs/a"


@pytest.mark.parametrize("status", [200, 404])
def test_the_not_found_document_with_its_status(status: int) -> None:
    h = cached(bucket_entry(not_found_document="app.html", not_found_status=status))
    _, transport = h.get("/pub/route/42")
    h.agents["pub"].answer(not_found())
    assert h.agents["pub"].sent[1].uri.endswith(b"/pub-bucket/app.html")
    h.agents["pub"].answer(obj(b"<html>spa</html>"))
    first = parse_response(transport.value())
    assert (first.status, first.body) == (status, b"<html>spa</html>")
    # the document missing too: the original 404
    h2 = cached(bucket_entry(not_found_document="app.html", not_found_status=status))
    _, transport2 = h2.get("/pub/route/42")
    h2.agents["pub"].answer(not_found())
    h2.agents["pub"].answer(not_found())
    assert parse_response(transport2.value()).status == 404


def test_purging_a_prefix_drops_its_listings() -> None:
    h = cached(listing_bucket())
    fetch(h, "/pub/docs/", answer=listing_answer(contents("docs/a")))
    fetch(h, "/pub/other/", answer=listing_answer(contents("other/a")))
    cache = h.assembly.caching.cache
    assert cache is not None
    purged: list[int] = []
    Deferred.fromCoroutine(cache.purge("pub", "docs/")).addCallback(purged.append)
    assert purged == [1]
    assert fetch(h, "/pub/other/").header("x-cache") == "HIT"
    again = fetch(h, "/pub/docs/", answer=listing_answer(contents("docs/a")))
    assert again.header("x-cache") == "MISS"


def test_a_page_kept_in_a_file_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "entry"
    path.write_bytes(b"head" + b'{"page": 1}' + b"tail")
    body = FileBody(str(path), 4, len(b'{"page": 1}'))
    entry = CacheEntry(((b"content-type", b"application/json"),), body, 0.0, 10.0, 10.0)
    assert _entry_body(entry) == b'{"page": 1}'
    path.write_bytes(b"head")  # shorter than the entry says: not served
    assert _entry_body(entry) is None
    path.unlink()
    assert _entry_body(entry) is None
