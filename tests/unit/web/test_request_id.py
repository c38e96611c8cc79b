"""Request ids (yatagarasu.web.request_id)."""

from __future__ import annotations

import re

from tests.unit.fakes import parse_response
from tests.unit.web.bucket_harness import harness


def test_invalid_incoming_request_id_is_replaced() -> None:
    h = harness()
    _, transport = h.get("/nowhere", "X-Request-ID: bad id with spaces")
    response = parse_response(transport.value())
    rid = response.header("x-request-id")
    assert rid is not None and re.fullmatch(r"[0-9a-f-]{36}", rid)
