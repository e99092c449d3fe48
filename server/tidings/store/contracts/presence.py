"""The presence contract: device entries every node sees.

A store whose :attr:`PresenceStore.shared_presence` is True (Redis) keeps each
node's online device entries, so every node lists every device of a user and
a killed node's entries vanish within their ttl. A store without it (SQLite,
one node) keeps no presence: the node keeps its own devices in memory
(:class:`tidings.presence.Presence`) and the calls here raise
``NotImplementedError``. The rules (``tests/store/test_presence_contract.py``):

* An entry is ``(user, entry id)`` with a JSON-able info; putting it again
  refreshes its ttl and replaces its info, and counts once.
* An entry not refreshed within ``ttl`` seconds (the store's clock) is gone
  from lists and counts.
* Each call is one atomic step and returns the user's live entries after it.
* Users never mix, whatever characters their names hold.
* Calls raise :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["PresenceStore"]


class PresenceStore:
    """Online device entries shared by the nodes (when ``shared_presence``)."""

    shared_presence: bool = False
    """True when presence entries live in the store (every node sees them);
    False: each node knows only its own devices (one node: everything), and the
    calls below raise ``NotImplementedError``."""

    async def presence_put(self, user: str, entry: str, info: dict[str, Any],
                           ttl: float) -> int:
        """Add or refresh one online device entry that lives ``ttl`` seconds unless
        refreshed (its info replaced); returns how many live entries the user has
        now."""
        raise NotImplementedError

    async def presence_put_many(self, entries: Sequence[tuple[str, str, dict[str, Any], float]]
                                ) -> list[int]:
        """:meth:`presence_put` of each ``(user, entry, info, ttl)``, in order; the
        counts each returned. A backend may send them all in one round trip (a
        node that sees many devices connect in one loop pass writes them once)."""
        return [await self.presence_put(*e) for e in entries]

    async def presence_remove(self, user: str, entry: str) -> int:
        """Remove an entry (an unknown one is fine); returns how many live entries
        the user has left."""
        raise NotImplementedError

    async def presence_list(self, user: str) -> list[dict[str, Any]]:
        """The user's live entries' infos, in no particular order."""
        raise NotImplementedError
