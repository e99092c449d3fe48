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
  archived (:meth:`withdraw_many`) or its inbox item expires
  (:meth:`withdraw_expired`, from the sweeper) anywhere.
* :meth:`submit` runs either in the background (a :class:`TaskSet`), so a
  slow provider never holds up the live channels.

The fallback (``push.fallback_after``): :meth:`live_first` skips a connected
device, which got the notification live, but keeps it waiting: if the user
has not reported the notification ``delivered`` by ``fallback_after`` seconds
later (the node's clock), :meth:`fire_due` sends it through the device's
platform after all. The report is per user, not per device: ``track`` carries
no device and the store records ``delivered`` once per user, so a report from
any of the user's devices cancels the fallback for all of them. A report on
this node drops the wait at once (:meth:`acknowledged`); one made on another
node is seen in the store when the wait ends (``push_acked``). Waits are held
in insertion order, which is their due order; at most
``push.fallback_pending_max`` of them, the oldest dropped over it (counted in
``tidings_push_fallback_dropped_total``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..clock import Clock, SystemClock
from ..config import PushSettings
from ..errors import TidingsError
from ..events import EventLog
from ..metrics import Metrics
from ..plumbing import TaskSet
from ..preferences import LIVE_EDGES
from ..store.contracts.push import PUSH_OUTCOMES, PushEndpointStore, Registered
from .endpoints import KINDS, parse_endpoint
from .providers import Provider, PushMessage, Result, Retrying
from .track import TrackSigner

__all__ = ["EVERYWHERE", "OUTCOMES", "WITHDRAW_MOST", "PushChannel", "Route"]

log = logging.getLogger("tidings.push")

OUTCOMES = PUSH_OUTCOMES
WITHDRAW_MOST = 20  # notifications one change (a read, an expiry) withdraws per user, at most
FALLBACK_TICK = 1.0  # seconds between looks at the fallback waits while any are held
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one user's notification may go on the platforms (the user's
    per-channel category switches, decided by policy.decide): ``kinds`` the
    platform channels allowed (None: every one); ``live`` the live edges that
    pushed it, so a device connected on one of them got it and is skipped (and
    waits for the fallback). A device connected only on another edge got
    nothing live: it is sent to like one that is away."""

    kinds: frozenset[str] | None = None
    live: frozenset[str] = frozenset(LIVE_EDGES)


EVERYWHERE = Route()


@dataclass(slots=True)
class _Waiting:
    due: float  # the node clock's time the fallback goes
    message: PushMessage
    endpoints: list[Registered]  # the connected devices' endpoints


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
        self.clock: Clock = SystemClock()  # the node's, set by the app
        self._waiting: OrderedDict[tuple[str, str], _Waiting] = OrderedDict()
        self._ticker = TaskSet("push-fallback")
        if metrics is not None:
            metrics.describe("tidings_push_total",
                             "Platform push attempts per endpoint, by outcome (pushed_webpush, "
                             "pushed_fcm, pushed_apns, provider_failed, endpoint_gone).")
            metrics.describe("tidings_push_fallback_dropped_total",
                             "Fallback waits dropped over push.fallback_pending_max (their "
                             "connected devices get no platform push).")

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
        if results and not message.dismiss:
            try:
                await self.store.push_tally(message.notification, Counter(results))
            except TidingsError as e:  # the store is down: the sends happened, uncounted
                log.info("push outcomes of %s not counted: %s", message.notification, e.code)
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
                         ttl: int, collapse_key: str | None = None,
                         routes: Mapping[str, Route] | None = None) -> int:
        """The live-first rule for users just sent ``notification`` (``fields``: each
        one's rendered item; ``routes``: each one's :class:`Route`, missing:
        :data:`EVERYWHERE`): each endpoint whose device is not connected now gets
        it through its platform; a connected one got it live, and waits for the
        fallback. Returns how many endpoints were sent to now. One store read for
        all the users; presence only for those with endpoints."""
        if not fields or not self.providers:
            return 0
        endpoints = await self.store.push_endpoints_many(list(fields))
        sent = 0
        for user, registered in endpoints.items():
            route = EVERYWHERE if routes is None else routes.get(user, EVERYWHERE)
            allowed = [r for r in registered if r.endpoint.kind in self.providers
                       and (route.kinds is None or r.endpoint.kind in route.kinds)]
            if not allowed:
                continue
            here: set[str] = set()
            if route.live and self.connected is not None:
                here = {str(d.get("device")) for d in await self.connected(user)
                        if d.get("edge") in route.live}
            away = [r for r in allowed if r.device not in here]
            connected = [r for r in allowed if r.device in here]
            message = self._message(notification, user, fields[user], ttl, collapse_key)
            if away:
                sent += len(away)
                self.submit(self.deliver(user, message, endpoints=away))
            if connected and self.settings.fallback_after > 0:
                self._wait(user, message, connected)
        return sent

    def _message(self, notification: str, user: str, item: Mapping[str, Any], ttl: int,
                 collapse_key: str | None) -> PushMessage:
        media = item.get("media")
        image = media.get("image") if isinstance(media, dict) else None
        return PushMessage(
            notification, title=str(item.get("title") or ""),
            body=str(item.get("body") or ""), data=item.get("data"), image=image,
            category=str(item.get("category") or "general"),
            priority=str(item.get("priority") or "normal"), ttl=ttl,
            collapse_key=collapse_key,
            track=None if self.signer is None else self.signer.track(user, notification))

    # -- the fallback ---------------------------------------------------------------------

    def _wait(self, user: str, message: PushMessage, endpoints: list[Registered]) -> None:
        key = (user, message.notification)
        self._waiting[key] = _Waiting(self.clock.now() + self.settings.fallback_after,
                                      message, endpoints)
        self._waiting.move_to_end(key)
        while len(self._waiting) > self.settings.fallback_pending_max:
            self._waiting.popitem(last=False)
            if self.metrics is not None:
                self.metrics.inc("tidings_push_fallback_dropped_total")
        if not self._ticker:
            self._ticker.spawn(self._tick())

    @property
    def waiting(self) -> int:
        """Fallback waits held now."""
        return len(self._waiting)

    def acknowledged(self, user: str, notification: str) -> None:
        """The user reported ``notification`` delivered: no fallback for it."""
        self._waiting.pop((user, notification), None)

    async def fire_due(self) -> int:
        """Send the fallbacks whose time has come (by the node's clock) to the
        users who have not reported them delivered anywhere; returns how many
        endpoints were sent to. A store that cannot say who reported counts as
        no report: a second notification beats a lost one."""
        now = self.clock.now()
        due: dict[str, list[tuple[str, _Waiting]]] = {}
        while self._waiting:
            (user, nid), waiting = next(iter(self._waiting.items()))
            if waiting.due > now:
                break
            self._waiting.popitem(last=False)
            due.setdefault(nid, []).append((user, waiting))
        sent = 0
        for nid, entries in due.items():
            try:
                acked = await self.store.push_acked(nid, [u for u, _ in entries])
            except TidingsError as e:
                log.info("push fallback of %s: acknowledgements unknown (%s)", nid, e.code)
                acked = set()
            for user, waiting in entries:
                if user in acked:
                    continue
                late = int(now - waiting.due + self.settings.fallback_after)
                message = dataclasses.replace(waiting.message,
                                              ttl=max(0, waiting.message.ttl - late))
                sent += len(waiting.endpoints)
                self.submit(self.deliver(user, message, endpoints=waiting.endpoints))
        return sent

    async def _tick(self) -> None:
        """While waits are held, look at them every :data:`FALLBACK_TICK` seconds."""
        while self._waiting:
            await asyncio.sleep(FALLBACK_TICK)
            try:
                await self.fire_due()
            except Exception:  # our bug: logged, and the next tick tries again
                log.exception("push fallback: a tick failed")

    async def withdraw(self, user: str, notification: str, collapse_key: str | None = None
                       ) -> dict[str, str]:
        """Withdraw an OS notification from every endpoint of the user."""
        return await self.deliver(user, PushMessage(notification, collapse_key=collapse_key,
                                                    dismiss=True, priority="normal"))

    async def withdraw_many(self, user: str, notifications: Sequence[str]) -> None:
        """:meth:`withdraw` each of ``notifications`` (read or archived together;
        the first :data:`WITHDRAW_MOST`), reading the user's endpoints once;
        nothing at all for a user without any."""
        endpoints = await self.store.push_endpoints(user)
        if endpoints:
            await self._dismiss(user, notifications, endpoints)

    async def withdraw_expired(self, expired: Mapping[str, Sequence[str]]) -> None:
        """Withdraw the OS notifications of inbox items that expired (the sweeper's
        changes, user -> ids; the first :data:`WITHDRAW_MOST` of each user's), with
        one store read of endpoints for all the users."""
        if not expired or not self.providers:
            return
        endpoints = await self.store.push_endpoints_many(list(expired))
        await asyncio.gather(*(self._dismiss(user, expired[user], registered)
                               for user, registered in endpoints.items()))

    async def _dismiss(self, user: str, notifications: Sequence[str],
                       endpoints: list[Registered]) -> None:
        for nid in notifications[:WITHDRAW_MOST]:
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
        await self._ticker.close()
        self._waiting.clear()
        await self._tasks.close(grace=2.0)
        for provider in self.providers.values():
            await provider.close()
        if self._session is not None:
            await self._session.close()

