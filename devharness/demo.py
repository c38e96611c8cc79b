"""Local demo (``make demo``, ``python -m devharness.demo``).

It starts a moto S3 server on 127.0.0.1 with SigV4 checking switched on, seeds two buckets,
writes a proxy config to ``.demo/yatagarasu.yaml``, runs the real proxy
(``twistd -n yatagarasu``) on 127.0.0.1:8080, prints curl lines to try, and streams the
proxy's log until Ctrl-C or SIGTERM. ``--smoke`` fetches every demo object instead and exits.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from devharness.demo_content import (
    DEMO_PROXY_PORT,
    PUBLIC_BUCKET,
    SeededObject,
    curl_lines,
    demo_config,
    demo_token,
    seed_demo_objects,
)
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, port_is_free
from devharness.proxy_config import write_config
from devharness.twistd import ProxyProcess, clean_exit, start_proxy
from devharness.waiting import StartupError

DEMO_MOTO_PORT = 5000


def smoke_check(proxy: ProxyProcess, seeded: Sequence[SeededObject], token: str) -> list[str]:
    """
    Fetch a few URLs through the proxy and compare with what was stored.

    :param proxy: the running proxy.
    :param seeded: the demo objects.
    :param token: a valid token for ``/private``.
    :returns: human-readable problems (empty when everything matched).
    """
    problems = []
    auth = {"Authorization": f"Bearer {token}"}
    for obj in seeded:
        private = obj.bucket != PUBLIC_BUCKET
        path = ("/private/" if private else "/public/") + urllib.parse.quote(obj.key)
        resp = proxy.get(path, timeout=30.0, headers=auth if private else None)
        print(f"  GET {path} -> {resp.status} ({len(resp.body)} bytes)")
        if resp.status != 200 or len(resp.body) != obj.size:
            problems.append(f"GET {path}: {resp.status}, {len(resp.body)} of {obj.size} bytes")
        elif resp.header("ETag") != obj.etag:
            problems.append(f"GET {path}: ETag {resp.header('ETag')} != {obj.etag}")
        if private:
            anonymous = proxy.get(path)
            print(f"  GET {path} without a token -> {anonymous.status}")
            if anonymous.status != 401:
                problems.append(f"GET {path} without a token answered {anonymous.status}")
    again = proxy.get("/public/hello.txt")
    print(f"  GET /public/hello.txt again -> X-Cache: {again.header('X-Cache')}")
    if again.header("X-Cache") != "HIT":
        problems.append(f"second GET of hello.txt: X-Cache {again.header('X-Cache')}, not HIT")
    resp = proxy.get("/public/no-such-key.txt")
    print(f"  GET /public/no-such-key.txt -> {resp.status}")
    if resp.status != 404:
        problems.append(f"missing key answered {resp.status}, expected 404")
    return problems


def _follow(path: Path, offset: int, out: IO[str]) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
    return offset + len(data)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the demo.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    :returns: the process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m devharness.demo",
        description="Run moto S3 (SigV4 on) + the Yatagarasu proxy locally.",
    )
    parser.add_argument("--port", type=int, default=DEMO_PROXY_PORT, help="proxy port (8080)")
    parser.add_argument(
        "--moto-port", type=int, default=0, help="moto port (default: 5000 if free, else any)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="state directory")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="fetch every demo object through the proxy, then stop (exit 1 on mismatch)",
    )
    args = parser.parse_args(argv)

    if not port_is_free(args.port):
        print(
            f"error: port {args.port} on {LOOPBACK} is already in use. Stop whatever listens "
            f"there (e.g. a previous `make demo`) or run `python -m devharness.demo --port N`.",
            file=sys.stderr,
        )
        return 2
    moto_port: int | None = args.moto_port or None
    if moto_port is None and port_is_free(DEMO_MOTO_PORT):
        moto_port = DEMO_MOTO_PORT
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    moto = MotoS3Server(workdir / "moto", port=moto_port)
    proxy: ProxyProcess | None = None
    try:
        print(f"starting moto S3 (SigV4 checking on) in {workdir / 'moto'} ...", flush=True)
        moto.start()
        print(f"moto S3 at {moto.endpoint_url}, access key {moto.access_key}", flush=True)
        seeded = seed_demo_objects(moto)
        jwt_secret = secrets.token_urlsafe(48)
        token = demo_token(jwt_secret)
        config = demo_config(moto, jwt_secret=jwt_secret, port=args.port)
        config_path = write_config(config, workdir / "yatagarasu.yaml")
        print(f"proxy config written to {config_path}", flush=True)
        log_path = workdir / "proxy.log"
        log_path.write_bytes(b"")
        print(f"starting twistd -n yatagarasu --config {config_path}", flush=True)
        proxy = start_proxy(config_path, workdir, timeout=60.0)
        if stop_requested.is_set():
            return 0
        base = proxy.base_url
        print(f"\nYatagarasu is up at {base} (pid {proxy.pid}); S3 is moto at {moto.endpoint_url}")
        print("\nObjects:")
        for obj in seeded:
            prefix = "/public/" if obj.bucket == PUBLIC_BUCKET else "/private/"
            print(f"  {prefix}{obj.key:<20} {obj.size:>8} bytes  {obj.content_type}  {obj.etag}")
        print("\nTry:")
        for line in curl_lines(base, seeded, token):
            print("  " + line)
        print("\nRun the first line twice: X-Cache says MISS, then HIT (served from memory).")
        print(f"\n/private needs a token (valid 24 h, HS256):\n  TOKEN={token}")
        print(f'  curl -i -H "Authorization: Bearer $TOKEN" {base}/private/secret.txt')
        print(flush=True)
        if args.smoke:
            problems = smoke_check(proxy, seeded, token)
            for problem in problems:
                print(f"  PROBLEM: {problem}", file=sys.stderr)
            print("smoke check " + ("failed" if problems else "passed"), flush=True)
            return 1 if problems else 0
        print("Streaming the proxy log; Ctrl-C stops the proxy and moto.\n", flush=True)
        offset = 0
        while not stop_requested.is_set():
            offset = _follow(log_path, offset, sys.stdout)
            if not proxy.is_running():
                _follow(log_path, offset, sys.stdout)
                print(f"\nthe proxy exited on its own (code {proxy.proc.returncode})")
                return 1
            stop_requested.wait(0.2)
        print("\nstopping ...", flush=True)
        code = proxy.stop(signal.SIGTERM, timeout=15.0)
        _follow(log_path, offset, sys.stdout)
        if not clean_exit(code):
            print(f"the proxy exited with code {code}", flush=True)
            return 1
        print("the proxy stopped cleanly", flush=True)
        return 0
    except (StartupError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if proxy is not None and proxy.is_running():
            proxy.stop(signal.SIGTERM, timeout=15.0)
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
