"""``tests/store/``: every contract module runs on the one store fixture of
``support.stores`` (SQLite, Redis, Redis Cluster)."""

from support.stores import clock, open_store, store

__all__ = ["clock", "open_store", "store"]
