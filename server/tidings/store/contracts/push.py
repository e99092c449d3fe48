"""The push endpoint contract: where each device of a user can be reached
when it is not connected (issue 16).

The rules every backend keeps (``tests/store/test_push_contract.py``):

* A user's device has at most one endpoint: registering again replaces it.
* An endpoint's address (the Web Push URL, the FCM or APNs token) belongs to
  one (user, device) at a time: registering it elsewhere moves it, so a
  browser profile that changes hands never gets the old user's pushes.
* A user keeps at most ``max_per_user`` endpoints; registering one more drops
  the oldest (browsers renew subscriptions; old ones die silently).
* Listing returns the user's endpoints, oldest first; removing by device, by
  address or all of a user's are each one step.
* Every call raises :class:`tidings.errors.Unavailable` when the backend
  cannot answer within its bound.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...push.endpoints import Endpoint

__all__ = ["PushEndpointStore", "Registered", "endpoint_from_row", "endpoint_row"]


@dataclass(frozen=True, slots=True)
class Registered:
    device: str
    endpoint: Endpoint
    created: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "created": self.created, **self.endpoint.to_dict()}


def endpoint_row(e: Endpoint) -> dict[str, str]:
    """The stored form (both backends keep these fields)."""
    return {"kind": e.kind, "address": e.address, "p256dh": e.p256dh, "auth": e.auth,
            "topic": e.topic}


def endpoint_from_row(row: Mapping[str, Any]) -> Endpoint:
    return Endpoint(row["kind"], row["address"], row.get("p256dh", ""), row.get("auth", ""),
                    row.get("topic", ""))


class PushEndpointStore(abc.ABC):
    """Push endpoints per user and device."""

    @abc.abstractmethod
    async def push_register(self, user: str, device: str, endpoint: Endpoint, *,
                            max_per_user: int) -> list[Registered]:
        """Store ``endpoint`` as ``device``'s (replacing its previous one, and
        taking the address from whoever had it); returns the user's endpoints."""

    @abc.abstractmethod
    async def push_endpoints(self, user: str) -> list[Registered]:
        """The user's endpoints, oldest first."""

    @abc.abstractmethod
    async def push_endpoints_many(self, users: Sequence[str]) -> dict[str, list[Registered]]:
        """Endpoints of many users at once (the send path); users with none are left out."""

    @abc.abstractmethod
    async def push_remove(self, user: str, *, device: str | None = None) -> int:
        """Remove the device's endpoint (None: all of the user's); how many went."""

    @abc.abstractmethod
    async def push_remove_address(self, address: str) -> bool:
        """Remove the endpoint with this address, whoever has it (the provider
        said it is gone); whether there was one."""
