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
    """A run of filter levels with no branch in it (a radix trie node).

    The node is reached from its parent by one level (the key in the parent's
    ``children``) and spans ``rest`` further levels: a chain of levels that
    only one subscribed filter prefix uses costs one node, not one per level.
    Subscribers and children hang off the end of the run only. Containers are
    made on first use, so a leaf holds no empty dict or set.
    """

    __slots__ = ("children", "hash_values", "rest", "values")

    def __init__(self, rest: tuple[str, ...] = ()) -> None:
        self.rest = rest
        self.children: dict[str, _Node[V]] | None = None
        self.values: set[V] | None = None  # subscribers whose filter ends here
        self.hash_values: set[V] | None = None  # subscribers of "<this>/#"

    def empty(self) -> bool:
        return not (self.children or self.values or self.hash_values)


class Trie(Generic[V]):
    """Subscriptions by filter: add, remove, and find the subscribers of a topic.

    Exact filters live in a dict (one lookup); wildcard filters in a radix
    trie whose walk visits at most two branches per level (the literal and
    ``+``). Runs of levels without a branch are kept in one node, so a deep
    filter that shares little with the others costs a few hundred bytes
    rather than a node per level (memory per subscription is bounded by what
    a user may subscribe to, not by how deep the filters are).
    """

    def __init__(self) -> None:
        self._exact: dict[str, set[V]] = {}
        self._root: _Node[V] = _Node()
        self._wild = 0

    @staticmethod
    def _split(flt: str) -> tuple[list[str], bool]:
        """(the levels that lead to the node holding ``flt``, whether it ends in ``#``)."""
        levels = flt.split("/")
        if levels[-1] == "#":
            return levels[:-1], True
        return levels, False

    def add(self, flt: str, value: V) -> None:
        if not is_wildcard(flt):
            self._exact.setdefault(flt, set()).add(value)
            return
        path, hashed = self._split(flt)
        node = self._root
        i, n = 0, len(path)
        while i < n:
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(path[i])
            if child is None:
                child = children[path[i]] = _Node(tuple(path[i + 1:]))
                node = child
                break
            rest = child.rest
            j = 0
            while j < len(rest) and i + 1 + j < n and rest[j] == path[i + 1 + j]:
                j += 1
            if j < len(rest):  # the run forks (or ends) inside this node: split it
                mid: _Node[V] = _Node(rest[:j])
                mid.children = {rest[j]: child}
                child.rest = rest[j + 1:]
                children[path[i]] = mid
                child = mid
            node = child
            i += 1 + j
        if hashed:
            if node.hash_values is None:
                node.hash_values = set()
            target = node.hash_values
        else:
            if node.values is None:
                node.values = set()
            target = node.values
        if value not in target:
            target.add(value)
            self._wild += 1

    def remove(self, flt: str, value: V) -> None:
        if not is_wildcard(flt):
            subs = self._exact.get(flt)
            if subs is not None:
                subs.discard(value)
                if not subs:
                    del self._exact[flt]
            return
        path, hashed = self._split(flt)
        trail: list[tuple[_Node[V], str]] = []
        node = self._root
        i, n = 0, len(path)
        while i < n:
            child = node.children.get(path[i]) if node.children else None
            if child is None:
                return
            end = i + 1 + len(child.rest)
            if end > n or tuple(path[i + 1:end]) != child.rest:
                return
            trail.append((node, path[i]))
            node, i = child, end
        target = node.hash_values if hashed else node.values
        if not target or value not in target:
            return
        target.discard(value)
        self._wild -= 1
        if not target:
            if hashed:
                node.hash_values = None
            else:
                node.values = None
        # prune branches left empty, then join a run that lost its only fork
        while trail and node.empty():
            parent, key = trail.pop()
            assert parent.children is not None
            del parent.children[key]
            if not parent.children:
                parent.children = None
            node = parent
        if trail and not (node.values or node.hash_values) and node.children \
                and len(node.children) == 1:
            (key, child), = node.children.items()
            child.rest = (*node.rest, key, *child.rest)
            parent, parent_key = trail[-1]
            assert parent.children is not None
            parent.children[parent_key] = child

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
                if node.values:
                    out |= node.values
                continue
            children = node.children
            if children is None:
                continue
            literal = children.get(levels[i])
            plus = children.get("+") if not (i == 0 and dollar) else None  # [MQTT-4.7.2-1]
            for child in (literal, plus) if plus is not None else (literal,):
                if child is None:
                    continue
                rest = child.rest
                if not rest:
                    stack.append((child, i + 1))
                    continue
                end = i + 1 + len(rest)
                if end > n:
                    continue  # every filter below is deeper than the topic
                k = i + 1
                for f in rest:  # the run: literals must equal the topic's levels
                    if f != "+" and f != levels[k]:
                        break
                    k += 1
                else:
                    stack.append((child, end))
        return out

    def filters(self) -> Iterator[str]:
        """Every filter with at least one subscriber (for diagnostics and resubscribe)."""
        yield from self._exact
        stack: list[tuple[_Node[V], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, prefix = stack.pop()
            if node.hash_values:
                yield "/".join((*prefix, "#"))
            for key, child in (node.children or {}).items():
                levels = (*prefix, key, *child.rest)
                if child.values:
                    yield "/".join(levels)
                stack.append((child, levels))

    def __len__(self) -> int:
        return sum(len(s) for s in self._exact.values()) + self._wild
