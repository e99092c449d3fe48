"""Check that config/single.toml documents every setting of tidings.config.

    python scripts/check_config_doc.py [config/single.toml]

The file promises "every setting, with its default and its environment
variable". This checks the promise against the code: the file loads, equals
the built-in defaults, names every key of every section, and mentions each
key's ``TIDINGS_<SECTION>_<KEY>`` variable. Exit status 1 lists what is off.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

from tidings import config

__all__ = ["problems"]

_TABLE_ONLY = {"rules"}  # [[history.rules]]: tables, not a key with an env variable


def problems(path: Path) -> list[str]:
    """What config/single.toml gets wrong, as messages; empty when it is right."""
    out: list[str] = []
    text = path.read_text(encoding="utf-8")
    try:
        loaded = config.load(path, {})
    except config.ConfigError as e:
        return [f"does not load: {e}"]
    table = tomllib.loads(text)
    defaults = config.load(None, {})  # with the sizes derived from [limits] filled in
    for section in dataclasses.fields(config.Settings):
        if section.name == "acl":
            continue
        values = getattr(defaults, section.name)
        for key in dataclasses.fields(values):
            if key.name in _TABLE_ONLY:
                continue
            name = f"{section.name}.{key.name}"
            if key.name not in table.get(section.name, {}):
                out.append(f"{name}: not in the file")
            elif getattr(getattr(loaded, section.name), key.name) != getattr(values, key.name):
                out.append(f"{name}: the file's value is not the default "
                           f"{getattr(values, key.name)!r}")
            env = f"TIDINGS_{section.name.upper()}_{key.name.upper()}"
            if env not in text:
                out.append(f"{name}: its variable {env} is not mentioned")
    for example in ("[[acl]]", "[[history.rules]]"):
        if example not in text:
            out.append(f"no {example} example")
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else Path(__file__).parent.parent / "config/single.toml")
    found = problems(path)
    for p in found:
        print(f"{path}: {p}", file=sys.stderr)
    if not found:
        print(f"{path}: documents every setting")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
