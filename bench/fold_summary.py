"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: top self and inclusive frames.

Usage::

    .venv/bin/python bench/fold_summary.py bench/results/.../relay.folded [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folded")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    with open(args.folded) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [short(x) for x in stack.split(";") if x.strip()]
            # skip the process/thread root frames py-spy may prepend
            frames = [x for x in frames if not x.startswith(("process ", "thread "))]
            if not frames:
                continue
            self_t[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
            mod = re.search(r"\(([^)]*)\)$", frames[-1])
            modules[mod.group(1) if mod else "?"] += n
    print(f"samples: {total}\n")
    print(f"top {args.top} self (leaf) frames:")
    for fr, n in self_t.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {fr}")
    print(f"\ntop {args.top} files by self time:")
    for fr, n in modules.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {fr}")
    print(f"\ntop {args.top} inclusive frames:")
    for fr, n in incl.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {fr}")


if __name__ == "__main__":
    main()
