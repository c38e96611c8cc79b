"""
``yatagarasu-sign-url``: make a signed link offline, with a bucket's ``signed_url`` key.

``yatagarasu-sign-url --key KEY [--kid KID] [--expires-in SECONDS] [--method GET]
[--client-ip IP] [--base-url URL] PATH`` prints the link for ``PATH`` (the URL path, bucket
prefix included), valid for ``--expires-in`` seconds (default 3600) from now. ``--key-env
NAME`` reads the key from the environment instead (it then does not show in the process
list). The link is made by :func:`yatagarasu.auth.link_signature.sign_link`, as the proxy's
``POST /admin/sign`` makes it and as the ``signed_url`` scheme checks it. Exit status 0 when
printed, 1 when the key or the path is refused, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from yatagarasu.auth.link_signature import sign_link

DEFAULT_LIFETIME_SECONDS = 3600


def main(
    argv: Sequence[str] | None = None,
    *,
    now: Callable[[], float] = time.time,
    environ: Mapping[str, str] = os.environ,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    :param argv: the arguments after the program name (default: ``sys.argv[1:]``).
    :param now: the time the lifetime counts from (unix seconds).
    :param environ: where ``--key-env`` reads the key.
    :param stdout: where the link goes (default: ``sys.stdout``).
    :param stderr: where errors go (default: ``sys.stderr``).
    :returns: the exit status.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = argparse.ArgumentParser(
        prog="yatagarasu-sign-url", description="Print a signed link for a path."
    )
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", help="the signing key (a bucket's auth.signed_url.keys[].secret)")
    keys.add_argument("--key-env", metavar="NAME", help="read the key from this variable")
    parser.add_argument("--kid", help="the key's id, written in the link")
    parser.add_argument(
        "--expires-in",
        type=int,
        default=DEFAULT_LIFETIME_SECONDS,
        metavar="SECONDS",
        help=f"lifetime in seconds (default {DEFAULT_LIFETIME_SECONDS})",
    )
    parser.add_argument("--method", default="GET", choices=("GET", "HEAD"))
    parser.add_argument("--client-ip", help="bind the link to this client address")
    parser.add_argument("--base-url", help="print an absolute URL: this, then the path")
    parser.add_argument("path", help="the URL path, bucket prefix included (/bucket/key)")
    args = parser.parse_args(argv)
    if args.key_env is not None:
        key = environ.get(args.key_env)
        if not key:
            err.write(f"yatagarasu-sign-url: ${args.key_env} is not set\n")
            return 1
    else:
        key = args.key
    if args.expires_in <= 0:
        err.write("yatagarasu-sign-url: --expires-in must be > 0\n")
        return 1
    try:
        link = sign_link(
            key.encode("utf-8"),
            args.path,
            int(now()) + args.expires_in,
            method=args.method,
            kid=args.kid,
            client_ip=args.client_ip,
        )
    except ValueError as e:
        err.write(f"yatagarasu-sign-url: {e}\n")
        return 1
    base = (args.base_url or "").rstrip("/")
    out.write(f"{base}{link.url}\n")
    out.flush()
    return 0
