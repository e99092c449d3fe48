"""The rooms keep their doors: no edge reaches past the node into the store.

``node.py`` promises that edges talk to the node, never to the store, so a
rule or a cache added in front of the store (or the session layer's checks)
cannot be bypassed by one transport. Checked on the syntax tree, so a
comment or a docstring that names the store does not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tidings.edges

EDGES = Path(tidings.edges.__file__).resolve().parent


def test_no_edge_touches_the_store() -> None:
    reached = []
    files = sorted(EDGES.rglob("*.py"))
    assert any(f.parent.name == "mqtt" for f in files)  # the MQTT package is looked at
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "store":
                reached.append(f"{path.relative_to(EDGES)}:{node.lineno}")
    assert reached == []
