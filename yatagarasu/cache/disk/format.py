"""
The disk layer's entry file format and layout, as pure functions: bytes in, bytes out.

The format and the layout are described in docs/CACHING.md ("Disk layer internals"); reading
and writing the files is in :mod:`yatagarasu.cache.disk.files`.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from yatagarasu.values import CacheEntry, CacheKey

VERSION = 1
PRELUDE = b"YTGC" + struct.pack(">HH", VERSION, 0)
PRELUDE_SIZE = len(PRELUDE)
_FOOTER = struct.Struct(">QII4s")
FOOTER_SIZE = _FOOTER.size
FOOTER_MAGIC = b"YTGE"
#: Temp files (``.tmp-<random>``) share the entries' directories.
TEMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")


class CorruptEntry(Exception):
    """
    A file in the cache directory is not a valid entry.

    :ivar inode: the file's inode number, when known (to remove that file and no newer one).
    """

    inode: int | None = None


@dataclass(frozen=True)
class EntryMeta:
    """What an entry file's trailer holds: everything of the entry but its body."""

    key: CacheKey
    headers: tuple[tuple[bytes, bytes], ...]
    stored_at: float
    expires_at: float
    retain_until: float
    revalidate: bool
    body_length: int


@dataclass(frozen=True)
class Footer:
    """
    An entry file's footer, checked against the prelude and the file's size.

    :ivar body_length: the body's length in bytes.
    :ivar header_length: the header JSON's length in bytes.
    :ivar crc: the CRC-32 of the header JSON.
    """

    body_length: int
    header_length: int
    crc: int

    @property
    def trailer_length(self) -> int:
        """The bytes of header and footer: what ends the file after the body."""
        return self.header_length + FOOTER_SIZE


def entry_path(root: str, digest: str) -> str:
    """:returns: the file of the entry whose key has this digest."""
    return os.path.join(root, digest[:2], digest[2:4], digest)


def is_fanout_name(name: str) -> bool:
    """:returns: whether ``name`` may be a fan-out directory (two hex digits)."""
    return _is_hex(name, 2)


def is_entry_name(name: str) -> bool:
    """:returns: whether ``name`` may be an entry file (a hex SHA-256 digest)."""
    return _is_hex(name, 64)


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and set(name) <= _HEX


def encode_trailer(key: CacheKey, entry: CacheEntry, body_length: int) -> bytes:
    """
    :param key: the entry's key.
    :param entry: its headers and times (the body is not read).
    :param body_length: the body's length in bytes.
    :returns: the header JSON and the footer, to append after the body.
    """
    header = json.dumps(
        {
            "bucket": key.bucket,
            "key": key.key,
            "variant": key.variant,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in entry.headers],
            "stored_at": entry.stored_at,
            "expires_at": entry.expires_at,
            "retain_until": entry.retain_until,
            "revalidate": entry.revalidate,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    return header + _FOOTER.pack(body_length, len(header), zlib.crc32(header), FOOTER_MAGIC)


def check_size(size: int) -> None:
    """
    :param size: an entry file's size.
    :raises CorruptEntry: when it is too small to hold a prelude and a footer.
    """
    if size < PRELUDE_SIZE + FOOTER_SIZE:
        raise CorruptEntry("truncated")


def decode_footer(prelude: bytes, tail: bytes, size: int) -> Footer:
    """
    :param prelude: the file's first :data:`PRELUDE_SIZE` bytes.
    :param tail: the file's last bytes (at least the footer, when the file is complete).
    :param size: the file's size.
    :returns: the footer.
    :raises CorruptEntry: on another format version, or a truncated or corrupt file.
    """
    if prelude != PRELUDE:
        raise CorruptEntry("bad prelude (not an entry, or another format version)")
    if len(tail) < FOOTER_SIZE:
        raise CorruptEntry("truncated")
    body_length, header_length, crc, magic = _FOOTER.unpack(tail[-FOOTER_SIZE:])
    if magic != FOOTER_MAGIC:
        raise CorruptEntry("bad footer (truncated or corrupt)")
    if PRELUDE_SIZE + body_length + header_length + FOOTER_SIZE != size:
        raise CorruptEntry("size does not match the footer (truncated)")
    return Footer(body_length, header_length, crc)


def decode_trailer(tail: bytes, footer: Footer) -> EntryMeta:
    """
    :param tail: the file's last bytes, at least :attr:`Footer.trailer_length` of them.
    :param footer: the footer :func:`decode_footer` found in them.
    :returns: the metadata.
    :raises CorruptEntry: on a checksum mismatch or a malformed header.
    """
    end = len(tail) - FOOTER_SIZE
    raw = tail[end - footer.header_length : end]
    if zlib.crc32(raw) != footer.crc:
        raise CorruptEntry("header checksum mismatch")
    return decode_header(raw, footer.body_length)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptEntry("bad number")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise CorruptEntry("bad string")
    return value


def decode_header(raw: bytes, body_length: int) -> EntryMeta:
    """
    :param raw: the header JSON.
    :param body_length: from the footer.
    :returns: the metadata.
    :raises CorruptEntry: when it is not a well-formed header.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise CorruptEntry(f"bad header: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptEntry("bad header")
    try:
        pairs = doc["headers"]
        if not isinstance(pairs, list):
            raise CorruptEntry("bad headers")
        headers: list[tuple[bytes, bytes]] = []
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise CorruptEntry("bad headers")
            headers.append((_string(pair[0]).encode("latin-1"), _string(pair[1]).encode("latin-1")))
        revalidate = doc["revalidate"]
        if not isinstance(revalidate, bool):
            raise CorruptEntry("bad revalidate")
        return EntryMeta(
            key=CacheKey(_string(doc["bucket"]), _string(doc["key"]), _string(doc["variant"])),
            headers=tuple(headers),
            stored_at=_number(doc["stored_at"]),
            expires_at=_number(doc["expires_at"]),
            retain_until=_number(doc["retain_until"]),
            revalidate=revalidate,
            body_length=body_length,
        )
    except KeyError as exc:
        raise CorruptEntry(f"header lacks {exc}") from None
    except UnicodeEncodeError:
        raise CorruptEntry("header value outside latin-1") from None
