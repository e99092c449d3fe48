"""Top entries of a py-spy ``--format raw`` profile (collapsed stacks).

    python bench/pyspy_top.py PROFILE.txt [N]

Prints the share of samples each function holds by itself (self) and with
what it calls (inclusive), functions named with their file, line numbers
folded together.
"""

from __future__ import annotations

import collections
import sys

__all__ = ["main", "top"]


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':', 1)[0].rstrip(')')})" if where else name


def top(path: str, n: int = 15) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            k = int(count)
            total += k
            frames = [_function(x) for x in stack.split(";")]
            own[frames[-1]] += k
            for fn in set(frames):
                inclusive[fn] += k
    out = [f"{path}: {total} samples", "self:"]
    out += [f"  {100 * k / total:5.1f}%  {fn}" for fn, k in own.most_common(n)]
    out.append("inclusive (below the event loop):")
    deep = [(fn, k) for fn, k in inclusive.most_common() if k < 0.95 * total]
    out += [f"  {100 * k / total:5.1f}%  {fn}" for fn, k in deep[:n]]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    print(top(argv[0], int(argv[1]) if len(argv) > 1 else 15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
