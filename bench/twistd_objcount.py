"""Run ``twistd`` in this process, dumping a histogram of live objects on SIGUSR1.

Used by ``bench/leakcheck.py``: ``kill -USR1 PID`` runs a full ``gc.collect()`` and writes JSON
to the file named by ``$OBJCOUNT_FILE``: how many unreachable objects the collection found, the
types it freed (garbage kept alive only by reference cycles until then), and the live
``{type name: count}`` after it.  Arguments are twistd's.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
from types import FrameType


def _histogram() -> collections.Counter[str]:
    return collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )


def dump(signum: int, frame: FrameType | None) -> None:
    before = _histogram()
    collected = gc.collect()
    after = _histogram()
    freed = before - after
    path = os.environ.get("OBJCOUNT_FILE", "/tmp/objcount.json")
    with open(path + ".tmp", "w") as f:
        json.dump(
            {
                "collected": collected,
                "freed_by_gc": dict(freed.most_common(15)),
                "live": dict(after),
                "gc_count": gc.get_count(),
            },
            f,
        )
    os.replace(path + ".tmp", path)


def main() -> None:
    signal.signal(signal.SIGUSR1, dump)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
