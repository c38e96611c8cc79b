"""The collector's first threshold while the proxy runs (``yatagarasu.collector``)."""

from __future__ import annotations

import gc

from twisted.application.service import MultiService

from yatagarasu.collector import YOUNG_THRESHOLD, YoungThreshold


class FakeCollector:
    def __init__(self, *thresholds: int) -> None:
        self.thresholds = thresholds

    def get_threshold(self) -> tuple[int, ...]:
        return self.thresholds

    def set_threshold(self, *thresholds: int) -> None:
        self.thresholds = thresholds


def test_running_raises_the_first_threshold_and_stopping_puts_back_what_it_found() -> None:
    collector = FakeCollector(700, 10, 10)
    service = YoungThreshold(collector=collector)
    assert collector.thresholds == (700, 10, 10)  # nothing happens before it starts
    service.startService()
    assert collector.thresholds == (YOUNG_THRESHOLD, 10, 10)
    service.stopService()
    assert collector.thresholds == (700, 10, 10)
    service.stopService()  # stopping twice changes nothing
    assert collector.thresholds == (700, 10, 10)


def test_the_older_generations_keep_their_thresholds() -> None:
    collector = FakeCollector(500, 7, 3)
    service = YoungThreshold(12_345, collector)
    service.startService()
    assert collector.thresholds == (12_345, 7, 3)
    service.stopService()
    assert collector.thresholds == (500, 7, 3)


def test_the_real_collector_as_a_child_of_the_proxys_service() -> None:
    before = gc.get_threshold()
    parent = MultiService()
    YoungThreshold().setServiceParent(parent)
    parent.startService()
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
    finally:
        parent.stopService()
    assert gc.get_threshold() == before
