"""Run ``twistd`` in this process, dumping a histogram of live objects on SIGUSR1.

Used by ``bench/leakcheck.py`` and ``bench/soak.py``: ``kill -USR1 PID`` runs a full
``gc.collect()`` (with ``gc.DEBUG_SAVEALL``, so what it found can be looked at) and writes JSON
to the file named by ``$OBJCOUNT_FILE``: how many unreachable objects the collection found, the
types it freed (garbage kept alive only by reference cycles until then), a few of the cycles
it found (chains of type names, each with how many objects of its first type the garbage
held; what a cycle references is freed with it but not named), and the live
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


def _name(o: object) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def _histogram() -> collections.Counter[str]:
    return collections.Counter(_name(o) for o in gc.get_objects())


def _cycle(start: object, members: set[int], limit: int = 5000) -> list[str]:
    """The shortest chain of references from ``start`` back to it, within ``members``."""
    queue: collections.deque[tuple[object, list[object]]] = collections.deque([(start, [start])])
    seen = {id(start)}
    for _ in range(limit):  # bounded breadth-first search
        if not queue:
            break
        obj, path = queue.popleft()
        for ref in gc.get_referents(obj):
            if ref is start:
                return [_describe(p, path[i + 1] if i + 1 < len(path) else start)
                        for i, p in enumerate(path)]  # fmt: skip
            if id(ref) in members and id(ref) not in seen:
                seen.add(id(ref))
                queue.append((ref, [*path, ref]))
    return []


def _describe(obj: object, nxt: object) -> str:
    """``type`` or, for a dict, ``dict[key]`` naming the key that holds ``nxt``."""
    if isinstance(obj, dict):
        keys = [str(k) for k, v in obj.items() if v is nxt][:1]
        return f"dict[{keys[0]}]" if keys else "dict"
    return _name(obj)


def dump(signum: int, frame: FrameType | None) -> None:
    before = _histogram()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        collected = gc.collect()
        garbage = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    members = {id(o) for o in garbage}
    cycles: collections.Counter[str] = collections.Counter()
    tried: set[str] = set()
    for o in garbage[:2000]:  # bounded: a few searches per type
        key = _name(o)
        if key in tried:
            continue
        chain = _cycle(o, members)
        if chain:
            tried.add(key)
            if any(not c.startswith(("builtins.", "dict")) for c in chain):
                cycles[" -> ".join(chain)] += sum(1 for g in garbage if _name(g) == key)
            if len(cycles) >= 12:
                break
    del garbage, members
    gc.collect()  # now really free what DEBUG_SAVEALL kept
    after = _histogram()
    freed = before - after
    path = os.environ.get("OBJCOUNT_FILE", "/tmp/objcount.json")
    with open(path + ".tmp", "w") as f:
        json.dump(
            {
                "collected": collected,
                "freed_by_gc": dict(freed.most_common(15)),
                "cycles": dict(cycles),
                "live": dict(after),
                "live_total": sum(after.values()),
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
