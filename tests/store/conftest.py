"""``tests/store/``: every contract module runs on the one store fixture of
``support.stores`` (SQLite, Redis, Redis Cluster)."""

from support.stores import clock, max_inbox, open_store, store

__all__ = ["clock", "max_inbox", "open_store", "store"]
