"""The names and arithmetic of sliced objects (yatagarasu.cache.slicing)."""

from __future__ import annotations

from yatagarasu.cache.slicing import (
    MANIFEST_HEADER,
    client_headers,
    is_slice_key,
    manifest_entry,
    manifest_of,
    slice_count,
    slice_key,
)
from yatagarasu.values import CacheEntry, CacheKey

KEY = CacheKey("pub", "big.bin")


def test_manifest_round_trip_spans_and_keys() -> None:
    headers = ((b"etag", b'"v1"'), (b"content-type", b"video/mp4"))
    entry = manifest_entry(headers, 2500, 1000, 10.0, 20.0, 30.0, False)
    manifest = manifest_of(entry)
    assert manifest is not None
    assert (manifest.total, manifest.slice_size, manifest.etag, manifest.count) == (
        2500,
        1000,
        b'"v1"',
        3,
    )
    assert [manifest.span(i) for i in range(3)] == [(0, 1000), (1000, 1000), (2000, 500)]
    keys = list(manifest.keys(KEY))
    assert len(set(keys)) == 3 and all(is_slice_key(k) for k in keys)
    assert all((k.bucket, k.key) == (KEY.bucket, KEY.key) for k in keys)
    assert not is_slice_key(KEY)
    assert client_headers(entry) == headers
    assert entry.body == b"" and entry.expires_at == 20.0


def test_slice_keys_differ_by_version_size_and_index() -> None:
    keys = {
        slice_key(KEY, b'"v1"', 1000, 0),
        slice_key(KEY, b'"v2"', 1000, 0),
        slice_key(KEY, b'"v1"', 2000, 0),
        slice_key(KEY, b'"v1"', 1000, 1),
    }
    assert len(keys) == 4
    assert slice_key(KEY, b'"v1"', 1000, 0) == slice_key(KEY, b'"v1"', 1000, 0)


def test_entries_that_are_not_manifests() -> None:
    def entry(*headers: tuple[bytes, bytes]) -> CacheEntry:
        return CacheEntry(headers=headers, body=b"x", stored_at=0, expires_at=1, retain_until=2)

    assert manifest_of(entry((b"etag", b'"v1"'))) is None
    assert manifest_of(entry((MANIFEST_HEADER, b"10 5"))) is None  # no ETag
    assert manifest_of(entry((b"etag", b"e"), (MANIFEST_HEADER, b"10"))) is None
    assert manifest_of(entry((b"etag", b"e"), (MANIFEST_HEADER, b"10 0"))) is None
    assert manifest_of(entry((b"etag", b"e"), (MANIFEST_HEADER, b"-1 5"))) is None
    assert slice_count(10, 5) == 2 and slice_count(11, 5) == 3
