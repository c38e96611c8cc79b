"""The disk layer's entry file format and layout: pure functions, bytes in and out, no I/O."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any

import pytest

from yatagarasu.cache.disk.format import (
    FOOTER_SIZE,
    PRELUDE,
    PRELUDE_SIZE,
    CorruptEntry,
    EntryMeta,
    check_size,
    decode_footer,
    decode_header,
    decode_trailer,
    encode_trailer,
    entry_path,
    is_entry_name,
    is_fanout_name,
)
from yatagarasu.testing import sample_entry as entry
from yatagarasu.values import CacheKey

KEY = CacheKey("b", "dir/ünï code.bin", "v1")
HEADERS = (
    (b"content-type", b"text/plain"),
    (b"content-disposition", b"attachment; filename=\xe9t\xe9.txt"),
)


def entry_file(body: bytes, key: CacheKey = KEY, **overrides: Any) -> bytes:
    """The bytes of a whole entry file, as the layer writes them."""
    return PRELUDE + body + encode_trailer(key, entry(body, **overrides), len(body))


def decode(raw: bytes) -> EntryMeta:
    """Decode a whole entry file the way the layer reads it: prelude, tail, then trailer."""
    check_size(len(raw))
    tail = raw[PRELUDE_SIZE:]
    return decode_trailer(tail, decode_footer(raw[:PRELUDE_SIZE], tail, len(raw)))


def test_prelude_is_magic_version_and_reserved() -> None:
    assert PRELUDE == b"YTGC\x00\x01\x00\x00"
    assert PRELUDE_SIZE == 8
    assert FOOTER_SIZE == 20


def test_trailer_is_header_json_then_footer() -> None:
    body = b"0123456789" * 10
    stored = entry(body, headers=HEADERS, stored_at=1.5, expires_at=2.0, retain_until=3.0)
    trailer = encode_trailer(KEY, stored, len(body))
    body_length, header_length, crc, magic = struct.unpack(">QII4s", trailer[-20:])
    header = trailer[:-20]
    assert (body_length, header_length, magic) == (len(body), len(header), b"YTGE")
    assert crc == zlib.crc32(header)
    assert json.loads(header.decode("utf-8")) == {
        "bucket": "b",
        "key": "dir/ünï code.bin",
        "variant": "v1",
        "headers": [
            ["content-type", "text/plain"],
            ["content-disposition", "attachment; filename=\u00e9t\u00e9.txt"],
        ],
        "stored_at": 1.5,
        "expires_at": 2.0,
        "retain_until": 3.0,
        "revalidate": False,
    }


@pytest.mark.parametrize("body", [b"", b"x", b"y" * 20_000])
def test_entry_roundtrips_exactly(body: bytes) -> None:
    raw = entry_file(
        body, headers=HEADERS, stored_at=10.0, expires_at=20.0, retain_until=30, revalidate=True
    )
    assert raw[PRELUDE_SIZE : PRELUDE_SIZE + len(body)] == body
    assert decode(raw) == EntryMeta(
        key=KEY,
        headers=HEADERS,
        stored_at=10.0,
        expires_at=20.0,
        retain_until=30.0,
        revalidate=True,
        body_length=len(body),
    )


def test_trailer_decodes_from_the_trailer_bytes_alone() -> None:
    """A tail read that missed part of a large header is read again, trailer only."""
    body = b"b" * 100
    raw = entry_file(body, headers=((b"x-long", b"v" * 10_000),))
    trailer = raw[PRELUDE_SIZE + len(body) :]
    footer = decode_footer(PRELUDE, raw[-8192:], len(raw))
    assert footer.trailer_length == len(trailer) > 8192
    assert decode_trailer(trailer, footer).headers == ((b"x-long", b"v" * 10_000),)


def test_footer_fields() -> None:
    raw = entry_file(b"body!")
    footer = decode_footer(raw[:PRELUDE_SIZE], raw[PRELUDE_SIZE:], len(raw))
    header_length = len(raw) - PRELUDE_SIZE - 5 - FOOTER_SIZE
    assert footer.body_length == 5
    assert footer.header_length == header_length
    assert footer.trailer_length == header_length + FOOTER_SIZE


def test_layout_fans_out_by_the_digest() -> None:
    digest = hashlib.sha256(b"b/a/b.txt").hexdigest()
    assert CacheKey("b", "a/b.txt").digest == digest
    assert entry_path("/cache", digest) == f"/cache/{digest[:2]}/{digest[2:4]}/{digest}"


@pytest.mark.parametrize(
    ("name", "fanout", "entry_name"),
    [
        ("ab", True, False),
        ("0f", True, False),
        ("a", False, False),
        ("AB", False, False),
        ("zz", False, False),
        ("a" * 64, False, True),
        ("0123456789abcdef" * 4, False, True),
        ("A" * 64, False, False),
        ("a" * 63, False, False),
        ("a" * 65, False, False),
        (".tmp-0123456789abcdef", False, False),
        ("stray.txt", False, False),
    ],
)
def test_names_of_fanout_directories_and_entries(name: str, fanout: bool, entry_name: bool) -> None:
    assert (is_fanout_name(name), is_entry_name(name)) == (fanout, entry_name)


def test_size_too_small_for_prelude_and_footer_is_truncated() -> None:
    check_size(PRELUDE_SIZE + FOOTER_SIZE)
    with pytest.raises(CorruptEntry, match="truncated"):
        check_size(PRELUDE_SIZE + FOOTER_SIZE - 1)


def flip(raw: bytes, at: int) -> bytes:
    changed = bytearray(raw)
    changed[at] ^= 0xFF
    return bytes(changed)


RAW = entry_file(b"f" * 100)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"YTGC\x00\x02\x00\x00" + RAW[PRELUDE_SIZE:], "bad prelude"),
        (flip(RAW, 0), "bad prelude"),
        (flip(RAW, len(RAW) - 1), "bad footer"),
        (RAW[:50] + RAW[51:], "size does not match the footer"),
        (RAW[:50] + b"extra" + RAW[50:], "size does not match the footer"),
        (flip(RAW, len(RAW) - FOOTER_SIZE - 10), "header checksum mismatch"),
        (flip(RAW, len(RAW) - FOOTER_SIZE + 3), "size does not match the footer"),
        (flip(RAW, len(RAW) - 6), "header checksum mismatch"),
        (b"not an entry at all, just some bytes" * 3, "bad prelude"),
    ],
)
def test_corrupt_or_truncated_files_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(CorruptEntry, match=reason):
        decode(raw)


def test_tail_shorter_than_a_footer_is_truncated() -> None:
    with pytest.raises(CorruptEntry, match="truncated"):
        decode_footer(PRELUDE, b"short", 40)


def test_body_bytes_are_not_checked() -> None:
    """Checking the body would mean reading every byte at start: only the trailer is."""
    assert decode(flip(RAW, PRELUDE_SIZE + 1)) == decode(RAW)


def header(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "bucket": "b",
        "key": "k",
        "variant": "",
        "headers": [["etag", '"e"']],
        "stored_at": 1,
        "expires_at": 2.5,
        "retain_until": 3,
        "revalidate": False,
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode("utf-8")


def test_header_decodes_to_metadata() -> None:
    assert decode_header(header(), 7) == EntryMeta(
        key=CacheKey("b", "k"),
        headers=((b"etag", b'"e"'),),
        stored_at=1.0,
        expires_at=2.5,
        retain_until=3.0,
        revalidate=False,
        body_length=7,
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad header"),
        (b"\xff\xfe", "bad header"),
        (b"[1, 2]", "bad header"),
        (header(key=None), "header lacks 'key'"),
        (header(revalidate=None), "header lacks 'revalidate'"),
        (header(headers={"etag": "x"}), "bad headers"),
        (header(headers=[["etag"]]), "bad headers"),
        (header(headers=["etag: x"]), "bad headers"),
        (header(headers=[["etag", 1]]), "bad string"),
        (header(headers=[["x-name", "\u20ac"]]), "outside latin-1"),
        (header(revalidate="no"), "bad revalidate"),
        (header(stored_at=True), "bad number"),
        (header(expires_at="2"), "bad number"),
        (header(bucket=1), "bad string"),
        (header(variant=None), "header lacks 'variant'"),
    ],
)
def test_malformed_headers_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(CorruptEntry, match=reason):
        decode_header(raw, 0)
