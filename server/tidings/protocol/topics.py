"""Topic names, topic filters and the wildcard trie (MQTT 3.1.1 section 4.7 rules).

A topic is a ``/``-separated UTF-8 name. A filter may use ``+`` for exactly
one level and ``#`` (last level only) for that level and everything below.
Topics starting with ``$`` are not matched by a filter whose first level is
a wildcard [MQTT-4.7.2-1]. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "TopicError",
    "Trie",
    "covers",
    "is_wildcard",
    "matches",
    "overlaps",
    "private_owner",
    "validate_filter",
    "validate_topic",
]

V = TypeVar("V", bound=Hashable)


class TopicError(ValueError):
    """A topic name or filter breaks the rules; the message says which one."""


def _check_common(s: object, max_length: int, max_depth: int) -> list[str]:
    if not isinstance(s, str):
        raise TopicError("must be a string")
    if not s:
        raise TopicError("must not be empty")  # [MQTT-4.7.3-1]
    if len(s.encode("utf-8", "surrogatepass")) > max_length:
        raise TopicError(f"longer than {max_length} bytes")
    if "\x00" in s:
        raise TopicError("must not contain U+0000")  # [MQTT-4.7.3-2]
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise TopicError("must be valid UTF-8") from None
    levels = s.split("/")
    if len(levels) > max_depth:
        raise TopicError(f"deeper than {max_depth} levels")
    return levels


def validate_topic(topic: object, *, max_length: int = 256, max_depth: int = 16) -> str:
    """Return ``topic`` if it is a valid topic name (no wildcards)."""
    _check_common(topic, max_length, max_depth)
    assert isinstance(topic, str)
    if "+" in topic or "#" in topic:
        raise TopicError("wildcards are not allowed in a topic name")  # [MQTT-3.3.2-2]
    return topic


def validate_filter(flt: object, *, max_length: int = 256, max_depth: int = 16) -> str:
    """Return ``flt`` if it is a valid topic filter."""
    levels = _check_common(flt, max_length, max_depth)
    assert isinstance(flt, str)
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError("'#' must be a whole last level")  # [MQTT-4.7.1-2]
        if "+" in level and level != "+":
            raise TopicError("'+' must be a whole level")  # [MQTT-4.7.1-3]
    return flt


def is_wildcard(flt: str) -> bool:
    return "+" in flt or "#" in flt


def matches(flt: str, topic: str) -> bool:
    """Whether ``topic`` matches the filter ``flt``."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # '#' also matches the parent level [MQTT-4.7.1-2]
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def covers(grant: str, flt: str) -> bool:
    """Whether every topic ``flt`` can match is also matched by ``grant``.

    Used for permissions: a wildcard in the request can never widen a grant
    (``+`` in a request is covered only by ``+`` or ``#``; ``#`` only by ``#``).
    """
    g_levels = grant.split("/")
    f_levels = flt.split("/")
    for i, g in enumerate(g_levels):
        if g == "#":
            # a leading '#' grant does not reach '$' topics [MQTT-4.7.2-1]
            return not (i == 0 and flt.startswith("$"))
        if i >= len(f_levels):
            return False
        f = f_levels[i]
        if f == "#":
            return False
        if g == "+":
            if i == 0 and f.startswith("$"):
                return False
            continue
        if f != g:  # '+' in the request is not covered by a literal
            return False
    return len(g_levels) == len(f_levels)


def overlaps(a: str, b: str) -> bool:
    """Whether some topic is matched by both filters ``a`` and ``b``.

    Used for denials: a deny must stop every request that could receive what
    it denies (``#`` reaches into ``secret/#``), not only requests inside it.
    """
    a_levels, b_levels = a.split("/"), b.split("/")
    for i, (x, y) in enumerate(zip(a_levels, b_levels, strict=False)):  # up to the shorter
        if i == 0 and ((x in ("+", "#") and y.startswith("$"))
                       or (y in ("+", "#") and x.startswith("$"))):
            return False  # [MQTT-4.7.2-1]
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    if len(a_levels) == len(b_levels):
        return True
    longer = a_levels if len(a_levels) > len(b_levels) else b_levels
    # the shorter one ended: only a final '#' also matches the parent [MQTT-4.7.1-2]
    return len(longer) == min(len(a_levels), len(b_levels)) + 1 and longer[-1] == "#"


def private_owner(topic: str) -> str | None:
    """The user a ``users/{uid}/...`` topic belongs to, else None."""
    if topic.startswith("users/"):
        uid = topic.split("/", 2)[1]
        return uid or None
    return None


class _Node(Generic[V]):
    __slots__ = ("children", "hash_values", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.values: set[V] = set()  # subscribers whose filter ends here
        self.hash_values: set[V] = set()  # subscribers of "<this>/#"


class Trie(Generic[V]):
    """Subscriptions by filter: add, remove, and find the subscribers of a topic.

    Exact filters live in a dict (one lookup); wildcard filters in a trie whose
    walk visits at most two branches per level (the literal and ``+``).
    """

    def __init__(self) -> None:
        self._exact: dict[str, set[V]] = {}
        self._root: _Node[V] = _Node()
        self._wild = 0

    def add(self, flt: str, value: V) -> None:
        if not is_wildcard(flt):
            self._exact.setdefault(flt, set()).add(value)
            return
        node = self._root
        levels = flt.split("/")
        for level in levels[:-1]:
            node = node.children.setdefault(level, _Node())
        last = levels[-1]
        if last == "#":
            if value not in node.hash_values:
                node.hash_values.add(value)
                self._wild += 1
        else:
            node = node.children.setdefault(last, _Node())
            if value not in node.values:
                node.values.add(value)
                self._wild += 1

    def remove(self, flt: str, value: V) -> None:
        if not is_wildcard(flt):
            subs = self._exact.get(flt)
            if subs is not None:
                subs.discard(value)
                if not subs:
                    del self._exact[flt]
            return
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        levels = flt.split("/")
        for level in levels[:-1]:
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        last = levels[-1]
        if last == "#":
            if value in node.hash_values:
                node.hash_values.discard(value)
                self._wild -= 1
        else:
            child = node.children.get(last)
            if child is None or value not in child.values:
                return
            child.values.discard(value)
            self._wild -= 1
            path.append((node, last))
            node = child
        # prune empty branches
        while path and not (node.children or node.values or node.hash_values):
            parent, key = path.pop()
            del parent.children[key]
            node = parent

    def match(self, topic: str) -> set[V]:
        """Every subscriber with a filter matching ``topic`` (each once)."""
        exact = self._exact.get(topic)
        if not self._wild:
            return set(exact) if exact else set()
        out: set[V] = set(exact) if exact else set()
        levels = topic.split("/")
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[V], int]] = [(self._root, 0)]
        n = len(levels)
        while stack:
            node, i = stack.pop()
            if node.hash_values and not (i == 0 and dollar):
                out |= node.hash_values  # [MQTT-4.7.1-2]: '#' matches the parent too
            if i == n:
                out |= node.values
                continue
            child = node.children.get(levels[i])
            if child is not None:
                stack.append((child, i + 1))
            if not (i == 0 and dollar):  # [MQTT-4.7.2-1]
                plus = node.children.get("+")
                if plus is not None:
                    stack.append((plus, i + 1))
        return out

    def filters(self) -> Iterator[str]:
        """Every filter with at least one subscriber (for diagnostics and resubscribe)."""
        yield from self._exact
        stack: list[tuple[_Node[V], str]] = [(self._root, "")]
        while stack:
            node, prefix = stack.pop()
            if node.hash_values:
                yield f"{prefix}/#" if prefix else "#"
            for key, child in node.children.items():
                name = f"{prefix}/{key}" if prefix else key
                if child.values:
                    yield name
                stack.append((child, name))

    def __len__(self) -> int:
        return sum(len(s) for s in self._exact.values()) + self._wild
