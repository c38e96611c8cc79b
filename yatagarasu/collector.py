"""
Python's cyclic garbage collector, run when 10,000 young objects have piled up instead of 700.

CPython starts a collection of its youngest generation when the container objects it tracks
(instances, dicts, lists, Deferreds, ...) allocated since the last collection outnumber those
freed since by ``gc.get_threshold()[0]``, 700 by default; every 10th such collection is one
of the middle generation, and every 10th of those a full one (once the objects that survived
into the oldest generation since the last full one are a quarter of it). A full collection
walks every tracked object of the process.

The proxy's requests make no garbage for the collector: their objects are freed by reference
counting (``python_gc_objects_collected_total`` does not move under load). A memory or disk
hit is served within one call, so its objects are gone before anything else is allocated, and
no collection runs. But a request that waits across reactor turns (a Redis hit, a MISS to S3)
keeps its objects alive meanwhile, and under load dozens of such requests are under way at
every moment. The count then moves up and down with them and, because a free does not bring
it below zero after a collection, drifts up to 700 again and again: 50 clients of Redis hits
made about 400 collections a second, 3 of them full, all of them finding nothing. They cost
a fifth of a Redis hit's CPU and were its slowest requests (p99 43 ms, 7 ms without them;
docs/PERFORMANCE.md, "Garbage collections that find nothing").

:class:`YoungThreshold` raises the first threshold to :data:`YOUNG_THRESHOLD` while the
proxy runs: such a drift then takes far longer to reach it, and real cyclic garbage (an
aborted stream's, a plugin's) is still collected, after at most that many objects instead of
700. The other two thresholds (how often a collection reaches the older generations) are
left as they are.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import Service

#: young objects (allocated minus freed) that start a collection while the proxy runs
YOUNG_THRESHOLD = 10_000


class YoungThreshold(Service):
    """
    While running, the collector's first threshold is ``young``; stopping puts back the
    thresholds it found.

    :param young: the first threshold.
    :param collector: the ``gc`` module (tests give a fake).
    """

    def __init__(self, young: int = YOUNG_THRESHOLD, collector: Any = gc) -> None:
        self._young = young
        self._collector = collector
        self._found: tuple[int, ...] | None = None

    def startService(self) -> None:
        super().startService()
        found = tuple(self._collector.get_threshold())
        self._found = found
        self._collector.set_threshold(self._young, *found[1:])

    def stopService(self) -> Any:
        found, self._found = self._found, None
        if found is not None:
            self._collector.set_threshold(*found)
        return super().stopService()
