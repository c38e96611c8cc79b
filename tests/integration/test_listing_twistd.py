"""
Directory listings, index documents and ``not_found_document`` fallbacks through the real
twistd process, against moto with SigV4 checking, with more than 1,000 keys under one prefix so
that S3's own pagination (and ours, ``?continuation_token=``) is exercised.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess

JWT_SECRET = "listing-jwt-secret-" + "l" * 40
#: more keys than one ListObjectsV2 page holds (1,000)
MANY = 1_050
#: breaks out of an attribute and opens a script, unless escaped
SCRIPT_KEY = 'docs/"><script>alert(1)<.txt'
DOCS = {
    "docs/readme.txt": b"read me\n",
    "docs/a&b.txt": b"ampersand\n",
    SCRIPT_KEY: b"not a script\n",
    "docs/sub/deeper.txt": b"deeper\n",
    "docs/sub/more/deepest.txt": b"deepest\n",
    "top.txt": b"top\n",
    "index.html": b"<html>the app</html>\n",
    "404.html": b"<html>nothing here</html>\n",
    "app/index.html": b"<html>app index</html>\n",
    "app/page.txt": b"a page\n",
}


@pytest.fixture(scope="module")
def site_bucket(moto_s3: MotoS3Server) -> Iterator[str]:
    """One S3 bucket for the module: :data:`DOCS` and ``many/k0000.txt`` ... (``MANY`` keys)."""
    bucket = moto_s3.create_bucket()
    objects = {**DOCS, **{f"many/k{i:04d}.txt": b"%d\n" % i for i in range(MANY)}}
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda item: moto_s3.put_object(bucket, item[0], item[1]), objects.items()))
    yield bucket


def bearer() -> dict[str, str]:
    claims = {"sub": "alice", "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, 'HS256')}"}


@pytest.fixture
def running(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, site_bucket: str
) -> ProxyProcess:
    def bucket(name: str, **extra: Any) -> dict[str, Any]:
        return bucket_config(moto_s3, name, site_bucket, **extra)

    config = {
        "jwt": {"secret": "${JWT_SECRET}"},
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 16, "max_item_size_mb": 4}},
        "buckets": [
            bucket("files", listing={"enabled": True, "format": "html", "cache_ttl_seconds": 60}),
            bucket("api", cache={"enabled": False}, listing={"enabled": True, "format": "json"}),
            bucket("private", auth={"enabled": True}, listing={"enabled": True, "format": "json"}),
            bucket("closed"),
            bucket(
                "spa",
                index_document="index.html",
                not_found_document="index.html",
                not_found_status=200,
                listing={"enabled": True, "format": "json"},
            ),
            bucket(
                "site",
                index_document="index.html",
                not_found_document="404.html",
                not_found_status=404,
            ),
        ],
    }
    return proxy(config, env={"JWT_SECRET": JWT_SECRET})


def list_requests(moto_s3: MotoS3Server, bucket: str) -> list[Any]:
    return [r for r in moto_s3.requests("GET", bucket) if "list-type=2" in r.query]


def test_json_listing_pages_through_more_than_a_thousand_keys(
    running: ProxyProcess, moto_s3: MotoS3Server, site_bucket: str
) -> None:
    moto_s3.clear_requests()
    names: list[str] = []
    target: str | None = "/api/many/"
    pages = 0
    while target is not None and pages < 5:
        response = running.get(target)
        assert response.status == 200, response.body
        assert response.header("content-type") == "application/json"
        document = response.json()
        assert document["prefix"] == "many/" and document["directories"] == []
        names += [o["name"] for o in document["objects"]]
        for listed in document["objects"][:3]:
            assert listed["size"] == len(b"%d\n" % int(listed["name"][1:5]))
            assert listed["etag"].startswith('"') and listed["last_modified"].endswith("Z")
            assert listed["href"] == f"/api/many/{listed['name']}"
        target = document["next"]
        if target is not None:
            token = document["next_continuation_token"]
            assert parse_qs(urlsplit(target).query)["continuation_token"] == [token]
        pages += 1
    assert pages == 2 and len(names) == MANY
    assert names == [f"k{i:04d}.txt" for i in range(MANY)]
    sent = list_requests(moto_s3, site_bucket)
    assert len(sent) == 2 and all(r.signed for r in sent)
    assert "continuation-token=" not in sent[0].query and "continuation-token=" in sent[1].query
    assert "delimiter=%2F" in sent[0].query and "max-keys=1000" in sent[0].query
    # the bucket does not cache: the same page asks S3 again
    assert running.get("/api/many/").status == 200
    assert len(list_requests(moto_s3, site_bucket)) == 3


def test_json_listing_has_directories_and_the_top(running: ProxyProcess) -> None:
    document = running.get("/api/docs/").json()
    assert [d["name"] for d in document["directories"]] == ["sub/"]
    assert document["directories"][0]["href"] == "/api/docs/sub/"
    assert {o["key"] for o in document["objects"]} == {
        "docs/readme.txt",
        "docs/a&b.txt",
        SCRIPT_KEY,
    }
    assert document["next_continuation_token"] is None and document["next"] is None
    top = running.get("/api").json()
    assert {d["prefix"] for d in top["directories"]} == {"docs/", "many/", "app/"}
    assert "top.txt" in {o["key"] for o in top["objects"]}
    assert running.get("/api/").json() == top
    missing = running.get("/api/no-such-dir/")
    assert missing.status == 404 and missing.json()["message"].startswith("no such directory")
    bad = running.get("/api/many/?continuation_token=")
    assert bad.status == 400


def test_html_listing_escapes_keys_paginates_and_is_cached(
    running: ProxyProcess, moto_s3: MotoS3Server, site_bucket: str
) -> None:
    moto_s3.clear_requests()
    page = running.get("/files/docs/")
    assert page.status == 200
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert page.header("x-content-type-options") == "nosniff"
    assert "default-src 'none'" in (page.header("content-security-policy") or "")
    assert page.header("x-cache") == "MISS"
    text = page.body.decode()
    assert "<script>" not in text
    assert f">{html.escape(SCRIPT_KEY[5:])}</a>" in text
    assert 'href="/files/docs/%22%3E%3Cscript%3Ealert%281%29%3C.txt"' in text
    assert ">a&amp;b.txt</a>" in text and 'href="/files/docs/a%26b.txt"' in text
    assert 'href="/files/docs/sub/">sub/</a>' in text and 'href="/files/">../</a>' in text
    assert len(list_requests(moto_s3, site_bucket)) == 1
    again = running.get("/files/docs/")
    assert (again.status, again.body, again.header("x-cache")) == (200, page.body, "HIT")
    assert len(list_requests(moto_s3, site_bucket)) == 1  # answered from the cache
    head = running.request("HEAD", "/files/docs/")
    assert (head.status, head.body) == (200, b"")
    assert head.header("content-length") == str(len(page.body))
    # the escaped key's link fetches the object itself
    linked = running.get("/files/docs/%22%3E%3Cscript%3Ealert%281%29%3C.txt")
    assert (linked.status, linked.body) == (200, DOCS[SCRIPT_KEY])
    # pages of more than 1,000 keys: follow rel="next"
    names: list[str] = []
    target: str | None = "/files/many/"
    for _ in range(5):
        assert target is not None
        body = running.get(target).body.decode()
        names += re.findall(r'<a href="/files/many/[^"]+">([^<]+)</a>', body)
        found = re.search(r'<a rel="next" href="([^"]+)">', body)
        target = html.unescape(found.group(1)) if found else None
        if target is None:
            break
    assert names == [f"k{i:04d}.txt" for i in range(MANY)]
    assert len(list_requests(moto_s3, site_bucket)) == 3


def test_listing_passes_through_auth_and_is_off_by_default(
    running: ProxyProcess, moto_s3: MotoS3Server, site_bucket: str
) -> None:
    moto_s3.clear_requests()
    refused = running.get("/private/docs/")
    assert refused.status == 401
    assert refused.header("www-authenticate") == 'Bearer realm="yatagarasu"'
    assert list_requests(moto_s3, site_bucket) == []
    allowed = running.get("/private/docs/", headers=bearer())
    assert allowed.status == 200 and allowed.json()["bucket"] == "private"
    closed = running.get("/closed/docs/")
    assert closed.status == 404
    assert "listing is not enabled" in closed.json()["message"]
    assert len(list_requests(moto_s3, site_bucket)) == 1


def test_index_document_wins_over_the_listing_and_spa_fallback_is_200(
    running: ProxyProcess, moto_s3: MotoS3Server, site_bucket: str
) -> None:
    moto_s3.clear_requests()
    index = running.get("/spa/app/")
    assert (index.status, index.body) == (200, DOCS["app/index.html"])
    assert list_requests(moto_s3, site_bucket) == []
    top = running.get("/spa/")
    assert (top.status, top.body) == (200, DOCS["index.html"])
    # no docs/index.html: the listing
    listing = running.get("/spa/docs/")
    assert listing.status == 200 and listing.json()["prefix"] == "docs/"
    # an unknown route of the single-page app: index.html, 200
    route = running.get("/spa/users/42/settings")
    assert (route.status, route.body) == (200, DOCS["index.html"])
    assert route.header("etag") is not None
    assert running.get("/spa/no-such-dir/").body == DOCS["index.html"]
    head = running.request("HEAD", "/spa/users/42")
    assert (head.status, head.body) == (200, b"")
    assert head.header("content-length") == str(len(DOCS["index.html"]))
    # objects that exist are served as they are
    assert running.get("/spa/app/page.txt").body == DOCS["app/page.txt"]


def test_not_found_document_with_404(running: ProxyProcess) -> None:
    index = running.get("/site/app/")
    assert (index.status, index.body) == (200, DOCS["app/index.html"])
    missing = running.get("/site/nothing.txt")
    assert (missing.status, missing.body) == (404, DOCS["404.html"])
    assert missing.header("content-length") == str(len(DOCS["404.html"]))
    # a directory without index document and without listing
    directory = running.get("/site/docs/")
    assert (directory.status, directory.body) == (404, DOCS["404.html"])
    head = running.request("HEAD", "/site/nothing.txt")
    assert (head.status, head.body) == (404, b"")
    assert running.get("/site/top.txt").body == DOCS["top.txt"]
