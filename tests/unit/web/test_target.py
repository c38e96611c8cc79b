"""
Routing a request target to a bucket and key (yatagarasu.web.target): prefixes, decoding,
traversal, addressing.
"""

from __future__ import annotations

import json

from tests.unit.fakes import Harness, bucket_entry, parse_response
from tests.unit.web.bucket_harness import harness


def test_longest_prefix_at_segment_boundary() -> None:
    h = harness(bucket_entry("short", "/products"), bucket_entry("long", "/products/images"))
    h.get("/products/images/cat.png")
    h.get("/products/docs/a.pdf")
    _, transport = h.get("/products-old/x")
    assert [s.uri for s in h.agents["long"].sent] == [b"http://127.0.0.1:9000/long-bucket/cat.png"]
    assert [s.uri for s in h.agents["short"].sent] == [
        b"http://127.0.0.1:9000/short-bucket/docs/a.pdf"
    ]
    response = parse_response(transport.value())
    assert response.status == 404
    assert json.loads(response.body)["message"] == "no bucket is configured for this path"


def test_keys_are_decoded_once() -> None:
    h = harness()
    h.get("/pub/a%2Fb")
    h.get("/pub/plus+sign%20space")
    h.get("/pub/%C3%B1/%E6%97%A5.txt")
    h.get("/pub/percent%2520literal")
    uris = [s.uri for s in h.agents["pub"].sent]
    base = b"http://127.0.0.1:9000/pub-bucket/"
    assert uris == [
        base + b"a/b",
        base + b"plus%2Bsign%20space",
        base + b"%C3%B1/%E6%97%A5.txt",
        base + b"percent%2520literal",
    ]


def test_prefix_without_key_is_404_without_upstream_call() -> None:
    h = harness()
    _, transport = h.get("/pub/")
    assert parse_response(transport.value()).status == 404
    assert h.agents["pub"].sent == []


def test_traversal_is_rejected_before_routing() -> None:
    h = harness()
    for target in (
        "/pub/../etc/passwd",
        "/pub/%2e%2e/x",
        "/pub/..%2fx",
        "/pub/%252e%252e/x",
        "/pub/a%5c..%5cb",
        "/pub/a%00b",
    ):
        _, transport = h.get(target)
        response = parse_response(transport.value())
        assert response.status == 400, target
        assert json.loads(response.body)["request_id"] == response.header("x-request-id")
    assert h.agents["pub"].sent == []


def test_aws_virtual_hosted_and_dotted_bucket_addressing() -> None:
    h = Harness(
        {
            "buckets": [
                {
                    "name": "aws",
                    "path_prefix": "/aws",
                    "s3": {
                        "bucket": "my-assets",
                        "region": "eu-west-1",
                        "access_key": "AKID",
                        "secret_key": "s",
                    },
                },
                {
                    "name": "dots",
                    "path_prefix": "/dots",
                    "s3": {
                        "bucket": "assets.example.com",
                        "region": "us-west-2",
                        "credentials": {"source": "anonymous"},
                    },
                },
            ]
        }
    )
    h.get("/aws/img/a%20b.png")
    sent = h.agents["aws"].sent[0]
    assert sent.uri == b"https://my-assets.s3.eu-west-1.amazonaws.com/img/a%20b.png"
    assert sent.headers.getRawHeaders(b"host") == [b"my-assets.s3.eu-west-1.amazonaws.com"]
    assert b"/eu-west-1/s3/aws4_request" in sent.headers.getRawHeaders(b"authorization")[0]
    h.get("/dots/k")
    anonymous = h.agents["dots"].sent[0]
    assert anonymous.uri == b"https://s3.us-west-2.amazonaws.com/assets.example.com/k"
    assert anonymous.headers.getRawHeaders(b"authorization") is None


def test_asterisk_target_is_for_options_only() -> None:
    h = harness()
    _, transport = h.send(b"GET * HTTP/1.1\r\nHost: proxy\r\n\r\n")
    response = parse_response(transport.value())
    assert response.status == 405
    assert response.header("allow") == "OPTIONS"
    assert json.loads(response.body)["status"] == 405
    _, transport = h.send(b"OPTIONS * HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert parse_response(transport.value()).status == 200
    assert h.agents["pub"].sent == []
