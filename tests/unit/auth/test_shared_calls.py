"""One call per key: joined by concurrent callers, cancelled only when every caller left."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed

from yatagarasu.auth.shared_calls import SharedCalls
from yatagarasu.testing import result_of


class Starts:
    def __init__(self) -> None:
        self.calls: list[Deferred[str]] = []
        self.cancelled = 0

    def __call__(self) -> Deferred[str]:
        def cancel(d: Deferred[str]) -> None:
            self.cancelled += 1

        call: Deferred[str] = Deferred(cancel)
        self.calls.append(call)
        return call


def results(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_concurrent_callers_share_one_call_and_a_later_one_starts_another() -> None:
    shared: SharedCalls[str] = SharedCalls()
    start = Starts()
    first, started = shared.join("k", start)
    second, joined = shared.join("k", start)
    other, _ = shared.join("other", start)
    assert (started, joined, len(start.calls), len(shared)) == (True, False, 2, 2)
    start.calls[0].callback("yes")
    assert (result_of(first), result_of(second)) == ("yes", "yes")
    assert len(shared) == 1  # "other" still runs
    third, started_again = shared.join("k", start)
    assert started_again and len(start.calls) == 3
    start.calls[2].errback(ValueError("boom"))
    with pytest.raises(ValueError):
        result_of(third)
    assert not other.called


def test_a_caller_leaving_does_not_cancel_the_call_the_last_one_does() -> None:
    shared: SharedCalls[str] = SharedCalls()
    start = Starts()
    first, _ = shared.join("k", start)
    second, _ = shared.join("k", start)
    first_seen = results(first)
    first.cancel()
    assert first_seen[0].check(CancelledError)
    assert start.cancelled == 0
    second_seen = results(second)
    second.cancel()
    assert second_seen[0].check(CancelledError)
    assert (start.cancelled, len(shared)) == (1, 0)
    fresh, started = shared.join("k", start)  # the cancelled call is forgotten
    assert started and len(start.calls) == 2
    start.calls[1].callback("again")
    assert result_of(fresh) == "again"


def test_a_call_that_completes_at_once() -> None:
    shared: SharedCalls[str] = SharedCalls()
    done, started = shared.join("k", lambda: succeed("now"))
    assert (started, result_of(done), len(shared)) == (True, "now", 0)
