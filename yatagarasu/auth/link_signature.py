"""
Signed links: the one implementation of what is signed and how, shared by the ``signed_url``
scheme that verifies links, ``POST /admin/sign`` and the ``yatagarasu-sign-url`` command.

A link is ``PATH?[kid=K&]expires=E[&bind=ip]&signature=S``. ``S`` is the unpadded base64url
HMAC-SHA256, under the key ``K`` names, of the lines::

    yatagarasu-signed-url-v1
    <METHOD>
    <PATH, percent-decoded then re-encoded in one normal form>
    <E, unix seconds>
    <K, or empty>
    <client IP in its compressed form, or empty when the link is not bound to one>

The normal form of the path makes ``/a/cat%201.png`` and ``/a/cat 1.png`` the same path (they
address the same object) and keeps line breaks out of the signed text. ``bind=ip`` only says
that the verifier must put the client's address in the last line: the address itself is not
in the link.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

#: the query parameters of a signed link (never forwarded upstream, never part of a cache key)
EXPIRES = "expires"
SIGNATURE = "signature"
KID = "kid"
BIND = "bind"
#: the value of ``bind`` for a link bound to the client's address
BIND_IP = "ip"

#: what a key id may look like (it travels in the link)
KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: the smallest key accepted, in bytes (the size of the HMAC-SHA256 output)
MIN_KEY_BYTES = 32

_VERSION = b"yatagarasu-signed-url-v1"
#: characters kept as they are in the normal form of a path (RFC 3986 pchar, minus "%")
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


@dataclass(frozen=True)
class SignedLink:
    """
    A link made by :func:`sign_link`.

    :ivar url: the path with its query string (``/bucket/key?expires=...&signature=...``).
    :ivar expires: when it stops working, unix seconds.
    :ivar kid: the key id in the link, or ``None``.
    """

    url: str
    expires: int
    kid: str | None


def normal_path(path: str | bytes) -> str:
    """
    :param path: a URL path, percent-encoded or not (``/a/cat%201.png`` or ``/a/cat 1.png``).
    :returns: its normal form: percent-decoded, then encoded again with every byte outside the
        RFC 3986 path characters as ``%XX`` (``/a/cat%201.png``).
    """
    raw = path if isinstance(path, bytes) else path.encode("utf-8")
    return quote(unquote_to_bytes(raw), safe=_PATH_SAFE)


def normal_ip(address: str) -> str:
    """
    :param address: an IP address as text.
    :returns: its compressed form (``::ffff:10.0.0.1`` becomes ``10.0.0.1``); text that is not
        an address is returned unchanged (it can then only match itself).
    """
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return parsed.compressed


def signature(
    key: bytes,
    method: str,
    path: str | bytes,
    expires: int,
    kid: str | None = None,
    client_ip: str | None = None,
) -> str:
    """
    :param key: the HMAC key.
    :param method: the HTTP method the link is for (``GET``).
    :param path: the URL path (any percent-encoding: see :func:`normal_path`).
    :param expires: unix seconds.
    :param kid: the key id written in the link, if any.
    :param client_ip: the client address the link is bound to, if any.
    :returns: the ``signature`` parameter's value.
    """
    message = b"\n".join((
        _VERSION,
        method.upper().encode("ascii", "replace"),
        normal_path(path).encode("ascii"),
        str(int(expires)).encode("ascii"),
        (kid or "").encode("ascii"),
        normal_ip(client_ip).encode("utf-8") if client_ip else b"",
    ))  # fmt: skip
    digest = hmac.digest(key, message, "sha256")  # the one-shot C implementation
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_link(
    key: bytes,
    path: str,
    expires: int,
    *,
    method: str = "GET",
    kid: str | None = None,
    client_ip: str | None = None,
) -> SignedLink:
    """
    Make a signed link.

    :param key: the HMAC key (at least :data:`MIN_KEY_BYTES`).
    :param path: the URL path, bucket prefix included (``/private/cat.png``).
    :param expires: unix seconds after which the link is refused.
    :param method: the HTTP method it is for (a ``GET`` link also answers ``HEAD``).
    :param kid: the key's id, written in the link so the verifier picks that key.
    :param client_ip: bind the link to this client address.
    :returns: the link.
    :raises ValueError: a short key, a path not starting with ``/``, a malformed key id, a
        client address that is not an IP address.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key must be at least {MIN_KEY_BYTES} bytes")
    if not path.startswith("/"):
        raise ValueError("the path must start with /")
    if kid is not None and not KID_PATTERN.match(kid):
        raise ValueError("a key id is 1-64 characters of letters, digits, '.', '_' or '-'")
    if client_ip:
        try:
            ipaddress.ip_address(client_ip.strip())
        except ValueError:
            raise ValueError(f"not an IP address: {client_ip!r}") from None
    query = [] if kid is None else [f"{KID}={kid}"]
    query.append(f"{EXPIRES}={int(expires)}")
    if client_ip:
        query.append(f"{BIND}={BIND_IP}")
    query.append(f"{SIGNATURE}={signature(key, method, path, expires, kid, client_ip)}")
    return SignedLink(f"{normal_path(path)}?{'&'.join(query)}", int(expires), kid)
