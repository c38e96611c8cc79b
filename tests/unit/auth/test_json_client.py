"""
The policy services' HTTP client with a real Agent on a MemoryReactorClock: the bytes it
sends, the answers it accepts, and every way it gives up (time limit on the clock included).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from tests.unit.auth.memory_http import MemoryHttpServer
from yatagarasu.auth.json_client import MAX_ANSWER_BYTES, JsonClient, PolicyServiceError

URL = "http://127.0.0.1:8181/v1/data/a/allow"


def post(client: JsonClient, document: Any = None, **headers: bytes) -> list[Any]:
    done = Deferred.fromCoroutine(
        client.post(
            URL, document or {"input": {"k": 1}}, {k.encode(): v for k, v in headers.items()}
        )
    )
    results: list[Any] = []
    done.addBoth(results.append)
    return results


def failure_of(results: list[Any]) -> BaseException:
    assert len(results) == 1 and isinstance(results[0], Failure), results
    return results[0].value


def test_posts_json_and_reads_the_answer_on_one_pooled_connection() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    client = JsonClient(clock, 0.1)
    results = post(client, {"input": {"b": 2, "a": 1}}, authorization=b"Bearer t")
    assert clock.tcpClients[0][:2] == ("127.0.0.1", 8181)
    assert clock.tcpClients[0][3] == 0.1  # the connect timeout is the time limit too
    request = server.answer(200, {"result": True})
    assert (request.method, request.path) == ("POST", "/v1/data/a/allow")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer t"
    assert request.body == b'{"input":{"a":1,"b":2}}'
    assert results == [{"result": True}]
    again = post(client)
    server.answer(200, {"result": False})
    assert again == [{"result": False}]
    assert server.connections == 1
    assert [c for c in clock.getDelayedCalls() if c.getTime() <= 0.1] == []  # no timer left


def test_no_answer_within_the_time_limit() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    results = post(JsonClient(clock, 0.25))
    assert server.pending() == 1
    clock.advance(0.24)
    assert results == []
    clock.advance(0.01)
    error = failure_of(results)
    assert isinstance(error, PolicyServiceError)
    assert str(error) == "no answer within 250 ms"


@pytest.mark.parametrize(
    ("status", "raw", "message"),
    [
        (500, b"{}", "answered HTTP 500"),
        (404, b"{}", "answered HTTP 404"),
        (200, b"<html>", "answer is not JSON"),
        (200, b"x" * (MAX_ANSWER_BYTES + 1), f"answer larger than {MAX_ANSWER_BYTES} bytes"),
    ],
)
def test_unusable_answers(status: int, raw: bytes, message: str) -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    results = post(JsonClient(clock, 1))
    server.answer(status, raw=raw)
    error = failure_of(results)
    assert isinstance(error, PolicyServiceError)
    assert str(error) == message


def test_a_refused_connection() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    results = post(JsonClient(clock, 1))
    server.refuse()
    clock.advance(0.5)  # HostnameEndpoint gives up once no other attempt is left
    error = failure_of(results)
    assert isinstance(error, PolicyServiceError)
    assert "cannot connect" in str(error)


def test_the_caller_cancelling_is_not_a_service_failure() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    client = JsonClient(clock, 1)
    done = Deferred.fromCoroutine(client.post(URL, {}, {}))
    results: list[Any] = []
    done.addBoth(results.append)
    assert server.pending() == 1
    done.cancel()
    assert isinstance(failure_of(results), CancelledError)


def test_a_connection_closed_before_an_answer_is_tried_once_more() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    results = post(JsonClient(clock, 1), {"input": {"n": 1}})
    first = server.drop()
    assert results == []  # asked again, on a new connection
    second = server.answer(200, {"result": True})
    assert first.body == second.body == b'{"input":{"n":1}}'
    assert (results, server.connections) == ([{"result": True}], 2)
    again = post(JsonClient(clock, 1))
    server.drop()
    server.drop()
    error = failure_of(again)
    assert isinstance(error, PolicyServiceError)
    assert str(error).startswith("connection closed before an answer (")
