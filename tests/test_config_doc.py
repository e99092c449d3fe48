"""config/single.toml documents every setting, with its default and env var."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_single_toml_documents_every_setting() -> None:
    spec = importlib.util.spec_from_file_location("check_config_doc",
                                                  ROOT / "scripts" / "check_config_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.problems(ROOT / "config" / "single.toml") == []
