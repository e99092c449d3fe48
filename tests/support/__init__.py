"""Helpers shared by test modules (fixtures and builders), so no test module
imports another. Importable as ``support`` (``tests/`` is on ``sys.path``:
``tests/conftest.py`` is the root conftest, in pytest's default prepend import
mode); subfolders of ``tests/`` are packages (``__init__.py``) so their module
names never collide."""
