"""Request ids (yatagarasu.web.request_id)."""

from __future__ import annotations

import os
import re
import uuid

from tests.unit.fakes import parse_response
from tests.unit.web.bucket_harness import harness
from yatagarasu.web import request_id


def test_invalid_incoming_request_id_is_replaced() -> None:
    h = harness()
    _, transport = h.get("/nowhere", "X-Request-ID: bad id with spaces")
    response = parse_response(transport.value())
    rid = response.header("x-request-id")
    assert rid is not None and re.fullmatch(r"[0-9a-f-]{36}", rid)


def test_new_request_ids_are_distinct_version_4_uuids() -> None:
    ids = [request_id.new_request_id() for _ in range(600)]  # more than one 4 KiB pool
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_a_forked_child_does_not_reuse_the_parents_random_digits() -> None:
    pool = request_id._RandomHex()
    first = pool.take32()
    pool.discard()  # what os.register_at_fork runs in the child
    assert pool._offset == 0 and pool._pool == ""
    assert pool.take32() != first
    read, write = os.pipe()
    request_id._random.take32()  # the parent's pool is filled
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        os.write(write, request_id._random._pool.encode() or b"-")
        os._exit(0)
    os.waitpid(pid, 0)
    child_pool = os.read(read, 16384)
    os.close(read)
    os.close(write)
    assert child_pool == b"-"
