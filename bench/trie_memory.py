"""Bytes per subscription in the hub's topic trie (issue 10: deep wildcard filters).

    python bench/trie_memory.py [--filters N] [--depth D]

Adds N distinct wildcard filters of D levels (the shape of the hostile probe:
256 per connection, nothing shared below the second level) to a
``tidings.protocol.topics.Trie`` and prints the Python heap it took, measured
with tracemalloc. Measures; asserts nothing. The whole-process figure is
tests/hostile/test_limits_memory.py (TIDINGS_TEST_VERBOSE=1 prints it).
"""

from __future__ import annotations

import argparse
import tracemalloc

from tidings.protocol.topics import Trie


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--filters", type=int, default=20000)
    parser.add_argument("--depth", type=int, default=16)
    args = parser.parse_args()
    tail = ["+", "x"] * ((args.depth - 3) // 2)
    tail += ["y"] * (args.depth - 3 - len(tail))
    filters = ["/".join([f"c{i % 100}", f"f{i}", *tail, "#"]) for i in range(args.filters)]
    owners = [object() for _ in range(100)]  # stand-ins for sessions
    tracemalloc.start()
    trie: Trie[object] = Trie()
    base = tracemalloc.get_traced_memory()[0]
    for i, flt in enumerate(filters):
        trie.add(flt, owners[i % 100])
    used = tracemalloc.get_traced_memory()[0] - base
    print(f"{args.filters} filters of {args.depth} levels: {used / args.filters:.0f} bytes "
          f"per filter in the trie")


if __name__ == "__main__":
    main()
