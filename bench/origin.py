"""The benchmark origin: a private nginx serving a generated tree path-style, like S3.

``http://127.0.0.1:PORT/<bucket>/<key>`` maps to ``<tmp>/data/<bucket>/<key>``.  nginx sends
``ETag``, ``Last-Modified``, ``Content-Length`` and ``Accept-Ranges`` for static files, which
is what the proxy needs from S3.  It ignores SigV4 signatures, which is fine for a benchmark.

The nginx started here uses its own config, pid file, logs and temp paths under a temporary
directory and runs in the foreground as our child (never the system nginx service).

Standalone use (serves until Ctrl-C)::

    .venv/bin/python bench/origin.py --port 18080
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import PIN, require_tools, wait_http

from devharness.ports import free_port
from devharness.processes import LoggedProcess

BUCKET = "bench"
#: key -> size in bytes.  The 1 GiB and 5 GiB objects are sparse (``truncate``: no disk
#: blocks), deleted at the end.
OBJECTS = {"1k.bin": 1024, "100k.bin": 100 * 1024, "1g.bin": 1024**3, "5g.bin": 5 * 1024**3}

#: an nginx of our own under ``{tmp}`` (pid file, logs, temp paths); ``{server}`` is the
#: ``server`` block and whatever it needs in ``http``
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush {tcp_nopush};
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""

ORIGIN_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/data;
        etag on;
        location / {{ }}
    }}"""


def nginx_conf(
    tmp: Path, server: str, *, workers: int = 1, access_log: bool = False, tcp_nopush: bool = True
) -> str:
    """
    :param server: the ``server`` block (already formatted).
    :returns: a whole nginx.conf running under ``tmp``.
    """
    return NGINX_CONF.format(
        tmp=tmp,
        workers=workers,
        access_log=f"{tmp}/access.log" if access_log else "off",
        tcp_nopush="on" if tcp_nopush else "off",
        server=server,
    )


class Origin:
    """Generate the data tree, run nginx on ``port``; ``close()`` stops it and deletes all."""

    def __init__(self, port: int | None = None, workers: int = 1, access_log: bool = False) -> None:
        require_tools()
        self.port = port or free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="yatagarasu-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers run as "nobody"
        data = self.tmp / "data" / BUCKET
        data.mkdir(parents=True)
        os.chmod(self.tmp / "data", 0o755)
        os.chmod(data, 0o755)
        for key, size in OBJECTS.items():
            path = data / key
            if size > 1024 * 1024:
                with open(path, "wb") as f:
                    f.truncate(size)  # sparse: no disk blocks, reads as zeros
            else:
                path.write_bytes(os.urandom(size))
            os.chmod(path, 0o644)
        self.conf = self.tmp / "nginx.conf"
        server = ORIGIN_SERVER.format(tmp=self.tmp, port=self.port)
        self.conf.write_text(nginx_conf(self.tmp, server, workers=workers, access_log=access_log))
        self.process = LoggedProcess(
            [*PIN["load"], "nginx", "-p", str(self.tmp), "-c", str(self.conf)],
            self.tmp / "nginx-stderr.log",
            cwd=self.tmp,
        )
        try:
            wait_http(f"{self.url}/{BUCKET}/1k.bin", timeout=10.0)
        except Exception:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.process.stop(signal.SIGQUIT, 10.0)  # graceful: master waits for workers
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Origin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    with Origin(args.port, args.workers) as origin:
        print(f"origin: {origin.url}/{BUCKET}/{{{','.join(OBJECTS)}}} (data in {origin.tmp})")
        deadline = time.monotonic() + args.max_seconds
        try:
            while time.monotonic() < deadline and origin.process.is_running():
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
