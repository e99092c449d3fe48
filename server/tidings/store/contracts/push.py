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
* Per notification, the platform push outcomes are counted
  (:meth:`PushEndpointStore.push_tally` adds, :meth:`PushEndpointStore.push_counts`
  reads: ``pushed_webpush``, ``pushed_fcm``, ``pushed_apns``,
  ``provider_failed``, ``endpoint_gone``), kept as long as the notification's
  stats; and :meth:`PushEndpointStore.push_acked` tells which users reported
  a notification ``delivered`` (the ``track`` record, once per user), so a
  node deciding the fallback sees an acknowledgement made on any node.
* Every call raises :class:`tidings.errors.Unavailable` when the backend
  cannot answer within its bound.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...push.endpoints import Endpoint

__all__ = ["PUSH_OUTCOMES", "PushEndpointStore", "Registered", "endpoint_from_row", "endpoint_row"]


PUSH_OUTCOMES = ("pushed_webpush", "pushed_fcm", "pushed_apns", "provider_failed",
                 "endpoint_gone")


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

    @abc.abstractmethod
    async def push_tally(self, notification: str, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (outcome -> n, outcomes from :data:`PUSH_OUTCOMES`) to the
        notification's platform push counts, atomically per call."""

    @abc.abstractmethod
    async def push_counts(self, notification: str) -> dict[str, int]:
        """The notification's platform push counts: every outcome of
        :data:`PUSH_OUTCOMES`, 0 where none."""

    @abc.abstractmethod
    async def push_acked(self, notification: str, users: Sequence[str]) -> set[str]:
        """Those of ``users`` who reported ``notification`` ``delivered`` (from any
        device, through ``track``)."""
