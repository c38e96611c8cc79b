"""
ListObjectsV2 (``GET /bucket/?list-type=2``): the query the proxy sends, and the bounded,
entity-free parse of S3's ``ListBucketResult`` document into a :class:`ListPage`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IResponse

from yatagarasu.errors import UpstreamError
from yatagarasu.s3.errors import BoundedCollector

#: the largest ListBucketResult read: 1,000 keys of up to 1,024 bytes, escaped, with their
#: metadata fit comfortably; a larger answer is refused rather than truncated
MAX_LISTING_BYTES = 8 * 1024 * 1024

#: the longest continuation token passed on (S3's are a few hundred characters)
MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True)
class ListedObject:
    """
    One key of a listing page.

    :ivar key: the full object key.
    :ivar size: its length in bytes.
    :ivar etag: its ETag as S3 gives it (quotes kept).
    :ivar last_modified: S3's ISO 8601 timestamp (``2026-12-02T07:43:12.000Z``).
    """

    key: str
    size: int
    etag: str
    last_modified: str


@dataclass(frozen=True)
class ListPage:
    """
    One page of ListObjectsV2 with delimiter ``/``.

    :ivar prefix: the prefix listed.
    :ivar objects: the keys directly under it.
    :ivar prefixes: the common prefixes (sub-directories) directly under it, ``/`` ended.
    :ivar next_token: S3's ``NextContinuationToken`` when the listing is truncated, else
        ``None``.
    """

    prefix: str
    objects: tuple[ListedObject, ...]
    prefixes: tuple[str, ...]
    next_token: str | None

    @property
    def empty(self) -> bool:
        """Whether the page has neither keys nor common prefixes."""
        return not self.objects and not self.prefixes and self.next_token is None


def list_query(prefix: str, max_keys: int, token: str | None) -> str:
    """
    The canonical (sorted, AWS-encoded) query of a ListObjectsV2 request: sent as is and
    signed as is.

    :param prefix: the key prefix to list (``""`` for the bucket's top).
    :param max_keys: keys per page (1-1000).
    :param token: S3's continuation token of the previous page, or ``None``.
    :returns: ``continuation-token=...&delimiter=%2F&list-type=2&max-keys=N&prefix=...``.
    """
    parameters = {"delimiter": "/", "list-type": "2", "max-keys": str(max_keys), "prefix": prefix}
    if token is not None:
        parameters["continuation-token"] = token
    return "&".join(
        f"{_encode(name)}={_encode(value)}" for name, value in sorted(parameters.items())
    )


def _encode(text: str) -> str:
    # SigV4 query encoding: everything but A-Z a-z 0-9 - _ . ~ as %XX (uppercase).
    return quote(text, safe="-_.~")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def parse_list_page(body: bytes, prefix: str) -> ListPage:
    """
    Parse a ``ListBucketResult`` (namespaced or not).

    A document type declaration is refused before parsing, so no entity is ever expanded
    (no "billion laughs", no external entity).

    :param body: the complete XML document.
    :param prefix: the prefix that was listed (used when the document omits it).
    :returns: the page.
    :raises UpstreamError: 502 when the document is not a well-formed ``ListBucketResult``.
    """
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise UpstreamError(
            502, "S3's listing has a document type declaration (refused)", retryable=False
        )
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise UpstreamError(
            502, f"S3's listing is not well-formed XML ({e})", retryable=False
        ) from None
    if _local(root.tag) != "ListBucketResult":
        raise UpstreamError(
            502, f"S3 answered a {_local(root.tag)} document, not a listing", retryable=False
        )
    objects = []
    prefixes = []
    for element in root:
        tag = _local(element.tag)
        if tag == "Contents":
            key = _text(element, "Key")
            size = _text(element, "Size") or "0"
            if key is None or not size.isdigit():
                raise UpstreamError(
                    502, "S3's listing has an entry without a key or size", retryable=False
                )
            objects.append(
                ListedObject(
                    key,
                    int(size),
                    _text(element, "ETag") or "",
                    _text(element, "LastModified") or "",
                )
            )
        elif tag == "CommonPrefixes":
            common = _text(element, "Prefix")
            if common:
                prefixes.append(common)
    truncated = (_text(root, "IsTruncated") or "").lower() == "true"
    token = _text(root, "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise UpstreamError(
            502, "S3's listing is truncated but has no continuation token", retryable=False
        )
    return ListPage(_text(root, "Prefix") or prefix, tuple(objects), tuple(prefixes), token)


async def read_list_page(
    response: IResponse, prefix: str, clock: IReactorTime, timeout: float
) -> ListPage:
    """
    Read and parse S3's ``200`` answer to a ListObjectsV2 request, bounded in size and time.

    :param response: the answer (body not read yet).
    :param prefix: the prefix listed.
    :param clock: time source.
    :param timeout: seconds the whole body may take.
    :returns: the page.
    :raises UpstreamError: 502 for a body over :data:`MAX_LISTING_BYTES` or not a listing,
        504 when it took longer than ``timeout``.
    """
    collector = BoundedCollector(MAX_LISTING_BYTES + 1)
    response.deliverBody(collector)
    reading = collector.done
    timed_out = False

    def expired(_result: object, _timeout: float) -> bytes:
        nonlocal timed_out
        timed_out = True
        return b""

    reading.addTimeout(timeout, clock, onTimeoutCancel=expired)
    body = await reading
    if timed_out:
        raise UpstreamError(504, f"S3's listing did not arrive within {timeout:g}s", retryable=True)
    if len(body) > MAX_LISTING_BYTES:
        raise UpstreamError(
            502, f"S3's listing is larger than {MAX_LISTING_BYTES} bytes", retryable=False
        )
    return parse_list_page(body, prefix)
