"""Counters and gauges, rendered as Prometheus text for ``GET /metrics``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

__all__ = ["Metrics"]


class Metrics:
    """Plain counters (cheap enough for hot paths) plus gauges read on demand."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self._help: dict[str, str] = {}
        self._counter_fns: dict[str, tuple[str, Callable[[], float]]] = {}

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def get(self, name: str, **labels: str) -> int:
        return self.counters[(name, tuple(sorted(labels.items())))]

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (text, read)

    def counter_fn(self, name: str, text: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere as a plain int (for hot paths), read when rendered."""
        self._counter_fns[name] = (text, read)

    def render(self) -> str:
        lines: list[str] = []
        by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], int]]] = {}
        for (name, labels), value in sorted(self.counters.items()):
            by_name.setdefault(name, []).append((labels, value))
        for name in sorted(set(by_name) | set(self._help) - set(self._gauges)
                           - set(self._counter_fns)):
            lines.append(f"# HELP {name} {self._help.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in by_name.get(name, [((), 0)]):
                lines.append(f"{name}{_labels(labels)} {value}")
        for kind, table in (("counter", self._counter_fns), ("gauge", self._gauges)):
            for name, (text, read) in sorted(table.items()):
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                lines.append(f"{name} {read()}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
