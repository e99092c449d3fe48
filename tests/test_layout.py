"""The test tree's own rules (README "Development"), so a new file cannot break them.

Every folder of ``tests/`` that holds test modules is a package: pytest's
default import mode then names ``edges/test_x.py`` ``edges.test_x``, and two
folders may hold files of the same name. Helpers live in ``tests/support/``:
a test module that imported another would run that module's tests' imports and
fixtures in its own namespace, and tie the two files together.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_folder_with_test_modules_is_a_package() -> None:
    folders = {p.parent for p in TESTS.rglob("test_*.py")} - {TESTS}
    assert folders, "no test subfolders found"
    missing = sorted(str(f.relative_to(TESTS)) for f in folders
                     if not (f / "__init__.py").is_file())
    assert missing == []


def test_no_module_imports_a_test_module() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(part.startswith("test_") for name in names for part in name.split(".")):
                offenders.append(f"{path.relative_to(TESTS)}: {', '.join(names)}")
    assert offenders == []
