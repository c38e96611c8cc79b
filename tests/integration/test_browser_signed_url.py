"""
The project's browser test: headless Chromium loads a page from another origin (a server of
this test's own, on another port) that embeds ``<img>`` elements pointing at a private bucket
through the real twistd process. The signed link loads (its natural width is the PNG's), the
expired one does not (natural width 0). The page's script writes the widths into the DOM after
the load event, and ``--dump-dom`` returns it.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devharness.browser import CHROMIUM_HINT, dump_dom, find_chromium
from devharness.demo_content import demo_png
from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess
from yatagarasu.auth.link_signature import sign_link

KEY = "browser-test-signing-key-" + "b" * 16
WIDTH, HEIGHT = 37, 23

PAGE = """<!doctype html>
<html><head><title>embedded</title></head><body>
<img id="fresh" src="{fresh}">
<img id="expired" src="{expired}">
<img id="unsigned" src="{unsigned}">
<script>
window.addEventListener("load", function () {{
  for (const img of document.images) {{
    img.setAttribute("data-natural-width", String(img.naturalWidth));
    img.setAttribute("data-complete", String(img.complete));
  }}
  document.body.setAttribute("data-loaded", "yes");
}});
</script>
</body></html>
"""


@pytest.fixture
def page_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """Another origin: serves ``pages[path]`` as HTML on a free 127.0.0.1 port."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def image_attributes(dom: str) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for tag in re.findall(r"<img\b[^>]*>", dom):
        attributes = {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag)}
        found[attributes["id"]] = attributes
    return found


def test_a_signed_img_from_another_origin_loads_and_an_expired_one_does_not(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    page_server: tuple[str, dict[str, bytes]],
) -> None:
    if find_chromium() is None:
        pytest.fail(f"chromium is needed for the browser test; {CHROMIUM_HINT}")
    png = demo_png(WIDTH, HEIGHT)
    for key in ("fresh.png", "expired.png", "unsigned.png"):
        moto_s3.put_object(s3_bucket, key, png, content_type="image/png")
    running = proxy(
        {
            "server": {"address": "127.0.0.1", "port": 0},
            "buckets": [
                bucket_config(
                    moto_s3,
                    "private",
                    s3_bucket,
                    auth={
                        "enabled": True,
                        "scheme": "signed_url",
                        "signed_url": {"keys": [{"kid": "k1", "secret": "${SIGNING_KEY}"}]},
                    },
                )
            ],
        },
        env={"SIGNING_KEY": KEY},
    )
    now = int(time.time())
    fresh = sign_link(KEY.encode(), "/private/fresh.png", now + 300, kid="k1")
    expired = sign_link(KEY.encode(), "/private/expired.png", now - 60, kid="k1")
    origin, pages = page_server
    assert not origin.endswith(f":{running.port}")  # another origin
    pages["/embed.html"] = PAGE.format(
        fresh=html.escape(running.url(fresh.url)),
        expired=html.escape(running.url(expired.url)),
        unsigned=html.escape(running.url("/private/unsigned.png")),
    ).encode()
    dom = dump_dom(f"{origin}/embed.html", workdir=tmp_path, timeout=90)
    assert 'data-loaded="yes"' in dom, dom[-2000:]
    images = image_attributes(dom)
    assert images["fresh"]["data-natural-width"] == str(WIDTH)
    assert images["expired"]["data-natural-width"] == "0"
    assert images["unsigned"]["data-natural-width"] == "0"
    # access lines are written in batches (at most a second late)
    running.wait_for_log("GET /private/fresh.png 200 ")
    running.wait_for_log("GET /private/expired.png 401 ")
    running.wait_for_log("GET /private/unsigned.png 401 ")
    log = running.log_text()
    assert fresh.url.split("signature=")[1] not in log
