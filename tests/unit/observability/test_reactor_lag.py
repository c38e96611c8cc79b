"""The reactor-lag probe on a fake clock: how late each timer ran, and nothing after stop."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.unit.web.metrics_harness import get, harness
from yatagarasu.observability.reactor_lag import INTERVAL, ReactorLagProbe


def test_each_timer_notes_how_late_it_ran_and_the_next_is_due_an_interval_later() -> None:
    clock = Clock()
    seen: list[float] = []
    probe = ReactorLagProbe(clock, seen.append)
    probe.startService()
    clock.advance(INTERVAL)
    assert seen == [0.0]  # on time
    clock.advance(INTERVAL + 0.75)  # the reactor could not turn for 0.75 s
    assert seen == pytest.approx([0.0, 0.75])
    clock.advance(INTERVAL)
    assert seen == pytest.approx([0.0, 0.75, 0.0])  # due one interval after the late one ran
    probe.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(10 * INTERVAL)
    assert len(seen) == 3


def test_lateness_is_a_histogram_in_metrics() -> None:
    h = harness({})
    h.assembly.metrics.reactor_lag(0.0004)
    h.assembly.metrics.reactor_lag(0.3)
    _, transport = get(h.assembly.site, "/metrics")
    text = transport.value().decode()
    assert 'yatagarasu_reactor_lag_seconds_bucket{le="0.001"} 1.0' in text
    assert 'yatagarasu_reactor_lag_seconds_bucket{le="0.25"} 1.0' in text
    assert 'yatagarasu_reactor_lag_seconds_bucket{le="0.5"} 2.0' in text
    assert "yatagarasu_reactor_lag_seconds_count 2.0" in text
