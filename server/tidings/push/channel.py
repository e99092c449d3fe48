"""The push channel: a node's providers, the endpoints they serve, and the
live-first rule's sending half.

``PushChannel.open`` builds the providers the settings configure (Web Push
always, unless turned off; FCM with a service account; APNs with a ``.p8``
key) and logs which are on and which are skipped. Then, for one user:

* :meth:`deliver` sends a :class:`PushMessage` to each of the user's
  endpoints whose device is not in ``skip`` (the devices that got it live)
  and whose kind is allowed (the user's per-channel category switches),
  each through its provider; an endpoint a provider calls gone is removed
  from the store. It returns the outcome per endpoint (``pushed_webpush``,
  ``pushed_fcm``, ``pushed_apns``, ``provider_failed``, ``endpoint_gone``),
  also counted in ``tidings_push_total{outcome}``.
* :meth:`withdraw` sends the withdrawal (a ``dismiss`` with the same
  collapse id) to every endpoint of the user, when a notification is read,
  archived or expires anywhere.
* :meth:`submit` runs either in the background (a :class:`TaskSet`), so a
  slow provider never holds up the live channels.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import aiohttp

from ..config import PushSettings
from ..events import EventLog
from ..metrics import Metrics
from ..plumbing import TaskSet
from ..store.contracts.push import PushEndpointStore, Registered
from .endpoints import KINDS, parse_endpoint
from .providers import Provider, PushMessage, Result, Retrying
from .track import TrackSigner

__all__ = ["OUTCOMES", "PushChannel"]

log = logging.getLogger("tidings.push")

OUTCOMES = ("pushed_webpush", "pushed_fcm", "pushed_apns", "provider_failed",
            "endpoint_gone")
Sleep = Callable[[float], Awaitable[None]]


def _outcome(kind: str, result: Result) -> str:
    return f"pushed_{kind}" if result is Result.SENT else str(result)


class PushChannel:
    def __init__(self, store: PushEndpointStore, providers: Mapping[str, Provider],
                 settings: PushSettings, metrics: Metrics | None = None,
                 session: aiohttp.ClientSession | None = None,
                 vapid_public_key: str | None = None) -> None:
        self.store = store
        self.providers = dict(providers)
        self.settings = settings
        self.metrics = metrics
        self.vapid_public_key = vapid_public_key
        self._session = session
        self._tasks = TaskSet("push")
        self.events: EventLog | None = None  # the node's event stream, set by the app
        # set by the app: the devices of a user connected anywhere (presence), and
        # the signer of the service worker's report links
        self.connected: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None
        self.signer: TrackSigner | None = None
        if metrics is not None:
            metrics.describe("tidings_push_total",
                             "Platform push attempts per endpoint, by outcome (pushed_webpush, "
                             "pushed_fcm, pushed_apns, provider_failed, endpoint_gone).")

    @classmethod
    async def open(cls, settings: PushSettings, folder: str, store: PushEndpointStore,
                   metrics: Metrics | None = None, *, sleep: Sleep = asyncio.sleep
                   ) -> PushChannel:
        """The providers the settings configure; logs which are on."""
        ctx = ssl.create_default_context(cafile=settings.ca_file or None)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                        timeout=aiohttp.ClientTimeout(total=settings.timeout))

        def retrying() -> Retrying:
            return Retrying(concurrency=settings.concurrency, retries=settings.retries,
                            timeout=settings.timeout, sleep=sleep)

        providers: dict[str, Provider] = {}
        public: str | None = None
        skipped: list[str] = []
        if settings.webpush:
            from .vapid import load_vapid, public_key_b64
            from .webpush import WebPushProvider

            vapid = load_vapid(folder, settings.vapid_private_key)
            public = public_key_b64(vapid)
            providers["webpush"] = WebPushProvider(vapid, settings.webpush_subject, session,
                                                   retrying())
        else:
            skipped.append("webpush (push.webpush = false)")
        if settings.fcm_service_account:
            from .fcm import FcmProvider

            providers["fcm"] = FcmProvider(settings.fcm_service_account, session, retrying(),
                                           url=settings.fcm_url)
        else:
            skipped.append("fcm (no push.fcm_service_account)")
        if settings.apns_key_file:
            from .apns import ApnsProvider

            providers["apns"] = ApnsProvider(
                settings.apns_key_file, settings.apns_key_id, settings.apns_team_id,
                settings.apns_topic, retrying(), sandbox=settings.apns_sandbox,
                ssl_context=ctx, host=settings.apns_host, port=settings.apns_port)
        else:
            skipped.append("apns (no push.apns_key_file)")
        log.info("platform push: %s on; %s", ", ".join(providers) or "nothing",
                 "skipped: " + "; ".join(skipped) if skipped else "every provider configured")
        return cls(store, providers, settings, metrics, session, public)

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if k in self.providers]

    async def register(self, user: str, device: str, body: Any) -> list[Registered]:
        """Validate and store a device's endpoint (400 naming the field if bad)."""
        endpoint = parse_endpoint(body)
        return await self.store.push_register(
            user, device, endpoint, max_per_user=self.settings.max_endpoints_per_user)

    async def deliver(self, user: str, message: PushMessage, *,
                      skip: Collection[str] = (),
                      kinds: Collection[str] | None = None,
                      endpoints: list[Registered] | None = None) -> dict[str, str]:
        """Send to the user's endpoints outside ``skip`` whose kind is in ``kinds``
        (None: any configured); -> outcome per device."""
        if endpoints is None:
            endpoints = await self.store.push_endpoints(user)
        chosen = [r for r in endpoints if r.device not in skip
                  and r.endpoint.kind in self.providers
                  and (kinds is None or r.endpoint.kind in kinds)]
        results = await asyncio.gather(*(self._one(user, r, message) for r in chosen))
        return {r.device: outcome for r, outcome in zip(chosen, results, strict=True)}

    async def _one(self, user: str, r: Registered, message: PushMessage) -> str:
        result = await self.providers[r.endpoint.kind].send(r.endpoint, message)
        if result is Result.GONE:
            await self.store.push_remove_address(r.endpoint.address)
        outcome = _outcome(r.endpoint.kind, result)
        if self.metrics is not None:
            self.metrics.inc("tidings_push_total", outcome=outcome)
        if self.events is not None and not message.dismiss:
            self.events.emit(outcome, user=user, notification=message.notification,
                             device=r.device)
        return outcome

    async def live_first(self, notification: str, fields: Mapping[str, dict[str, Any]], *,
                         ttl: int, collapse_key: str | None = None) -> int:
        """The live-first rule for users just sent ``notification`` live (``fields``:
        each one's rendered item): each endpoint whose device is not connected now
        gets it through its platform; a connected device got it live. Returns how
        many endpoints were sent to. One store read for all the users; presence
        only for those with endpoints."""
        if not fields or not self.providers:
            return 0
        endpoints = await self.store.push_endpoints_many(list(fields))
        sent = 0
        for user, registered in endpoints.items():
            skip: set[str] = set()
            if self.connected is not None:
                skip = {str(d.get("device")) for d in await self.connected(user)}
            away = [r for r in registered if r.device not in skip]
            if not away:
                continue
            item = fields[user]
            media = item.get("media")
            image = media.get("image") if isinstance(media, dict) else None
            message = PushMessage(
                notification, title=str(item.get("title") or ""),
                body=str(item.get("body") or ""), data=item.get("data"), image=image,
                category=str(item.get("category") or "general"),
                priority=str(item.get("priority") or "normal"), ttl=ttl,
                collapse_key=collapse_key,
                track=None if self.signer is None else self.signer.track(user, notification))
            sent += len(away)
            self.submit(self.deliver(user, message, endpoints=away))
        return sent

    async def withdraw(self, user: str, notification: str, collapse_key: str | None = None
                       ) -> dict[str, str]:
        """Withdraw an OS notification from every endpoint of the user."""
        return await self.deliver(user, PushMessage(notification, collapse_key=collapse_key,
                                                    dismiss=True, priority="normal"))

    async def withdraw_many(self, user: str, notifications: Collection[str]) -> None:
        """:meth:`withdraw` each of ``notifications`` (read or archived together),
        reading the user's endpoints once; nothing at all for a user without any."""
        endpoints = await self.store.push_endpoints(user)
        if not endpoints:
            return
        for nid in notifications:
            await self.deliver(user, PushMessage(nid, dismiss=True, priority="normal"),
                               endpoints=endpoints)

    def submit(self, work: Awaitable[Any]) -> None:
        """Run ``deliver`` / ``withdraw`` in the background."""

        async def run() -> None:
            await work

        self._tasks.spawn(run())

    async def wait_idle(self) -> None:
        """Until every send and withdrawal submitted so far has ended."""
        await self._tasks.wait()

    async def close(self) -> None:
        await self._tasks.close(grace=2.0)
        for provider in self.providers.values():
            await provider.close()
        if self._session is not None:
            await self._session.close()

