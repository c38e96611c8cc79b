"""
Sliced caching of large objects: the names and the arithmetic, no I/O.

An object above a bucket's slice threshold is cached as a *manifest* under its own key — an
entry with S3's headers, an empty body and the :data:`MANIFEST_HEADER` field giving its total
length and slice size — and fixed-size *slices*, each an entry under the same bucket and object
key with a variant naming the slice size, the object's ETag and the slice index
(:func:`slice_key`). Slices of two versions of an object never share a key, so a changed
object cannot mix them; prefix and bucket purges cover slices like any entry of the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from yatagarasu.values import CacheEntry, CacheKey

#: the manifest's marker field: ``<total length> <slice size>`` (never sent to clients)
MANIFEST_HEADER = b"x-yatagarasu-slices"

#: how a slice key's variant starts
SLICE_VARIANT = "slice:"


@dataclass(frozen=True)
class SliceManifest:
    """
    What is known of a sliced object.

    :ivar entry: the manifest entry (S3's headers, freshness).
    :ivar total: the object's length.
    :ivar slice_size: the length of every slice but the last.
    :ivar etag: the object's ``ETag`` (part of every slice key).
    """

    entry: CacheEntry
    total: int
    slice_size: int
    etag: bytes

    @property
    def count(self) -> int:
        """How many slices the object has."""
        return slice_count(self.total, self.slice_size)

    def span(self, index: int) -> tuple[int, int]:
        """
        :param index: a slice index.
        :returns: the slice's first byte and its length.
        """
        first = index * self.slice_size
        return first, min(self.slice_size, self.total - first)

    def key(self, object_key: CacheKey, index: int) -> CacheKey:
        """:returns: the cache key of slice ``index`` of this version of the object."""
        return slice_key(object_key, self.etag, self.slice_size, index)

    def keys(self, object_key: CacheKey) -> Iterator[CacheKey]:
        """:returns: the keys of every slice of this version."""
        return (self.key(object_key, i) for i in range(self.count))


def slice_count(total: int, slice_size: int) -> int:
    """:returns: how many slices of ``slice_size`` bytes hold ``total`` bytes."""
    return -(-total // slice_size)


def slice_key(object_key: CacheKey, etag: bytes, slice_size: int, index: int) -> CacheKey:
    """
    :param object_key: the object's key.
    :param etag: the object's ``ETag`` value (hashed into the key: any bytes are safe).
    :param slice_size: the slice size the object was cut with.
    :param index: the slice index.
    :returns: the key of that slice: same bucket and object key, variant
        ``slice:<size>:<etag hash>:<index>``.
    """
    tag = hashlib.sha256(etag).hexdigest()[:32]
    return CacheKey(object_key.bucket, object_key.key, f"{SLICE_VARIANT}{slice_size}:{tag}:{index}")


def is_slice_key(key: CacheKey) -> bool:
    """:returns: whether ``key`` names a slice (not a whole object or a manifest)."""
    return key.variant.startswith(SLICE_VARIANT)


def manifest_entry(
    headers: tuple[tuple[bytes, bytes], ...],
    total: int,
    slice_size: int,
    stored_at: float,
    expires_at: float,
    retain_until: float,
    revalidate: bool,
) -> CacheEntry:
    """
    :param headers: S3's stored headers (must include ``etag``).
    :param total: the object's length.
    :param slice_size: the slice size.
    :returns: the manifest entry of a sliced object (empty body).
    """
    marker = (MANIFEST_HEADER, b"%d %d" % (total, slice_size))
    return CacheEntry(
        headers=(*headers, marker),
        body=b"",
        stored_at=stored_at,
        expires_at=expires_at,
        retain_until=retain_until,
        revalidate=revalidate,
    )


def manifest_of(entry: CacheEntry) -> SliceManifest | None:
    """
    :param entry: a cached entry.
    :returns: its manifest when it is a sliced object's (with an ETag and a well-formed
        marker), else ``None``.
    """
    marker = entry.header(MANIFEST_HEADER)
    if marker is None:
        return None
    etag = entry.header(b"etag")
    parts = marker.split(b" ")
    if etag is None or len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    total, size = int(parts[0]), int(parts[1])
    if size <= 0:
        return None
    return SliceManifest(entry, total, size, etag)


def client_headers(entry: CacheEntry) -> tuple[tuple[bytes, bytes], ...]:
    """:returns: a manifest's headers as sent to clients (without the marker)."""
    return tuple((n, v) for n, v in entry.headers if n != MANIFEST_HEADER)
