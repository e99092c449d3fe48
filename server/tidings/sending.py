"""The send pipeline: a notification job, chunk by chunk, and the due queue.

A notification to an audience (tags, a segment, an inline audience, or a
scheduled one to a list of users) is a job in the store
(:class:`~tidings.store.contracts.notifications.NotificationStore`). The
:class:`Sender` of every node runs one scheduler task reading the node's
clock; each :meth:`Sender.step`:

1. claims due jobs (a ``scheduled`` one whose time came, or a ``sending`` one
   whose node died: its lease ran out) and sends each, one page of
   ``audience.page_size`` users at a time: per user, preferences, attributes
   (for content), locale and recent live pushes go to
   :func:`tidings.policy.decide`; the chunk is written by one
   ``store.deliver`` (which skips users already recorded, so a chunk replayed
   after a crash sends nobody anything twice), fanned out, and the job's
   cursor moved (renewing the lease) before the next chunk. The loop yields
   between chunks, so the node keeps answering.
2. fires due per-user deliveries (held until quiet hours ended, or waiting
   for the user's own ``send_at_local`` / ``best_time``): each is decided
   again at its time.

Claims make each of these happen on one node at a time, in a cluster too.
The outcomes are counted in ``tidings_notification_outcomes_total{outcome}``.

Per user, the one outcome recorded (and counted) is the decision's: ``pushed``
when some edge pushes it live (the stream entry names those edges when they
are not all, see :func:`tidings.store.base.routed_away`), else what the other
edges got (``held``, ``silent_*``), else ``suppressed_category`` or
``expired``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .audience import parse_audience, parse_tag_selector
from .clock import utc
from .config import AudienceSettings, NotifySettings
from .content import Content
from .errors import BadRequest, TidingsError, TooLarge
from .node import Node
from .plumbing import TaskSet
from .policy import DAY, Decision, Notice, Outcome, decide
from .preferences import EDGES, Preferences, Rules, parse
from .schedule import BEST_TIME_HISTORY, LocalTime, best_time, local_fire_time, parse_send_at_local
from .store.base import OUTCOMES, AudienceQuery, Delivery, Job
from .store.contracts.audience import matches

__all__ = ["MAX_JOBS_PER_STEP", "Plan", "Sender", "outcome_of"]

log = logging.getLogger("tidings.sending")

MAX_JOBS_PER_STEP = 16  # jobs one scheduler step sends; more wait for the next step
ONLINE_CHUNK = 100  # users per chunk of the online-first pass (small: the first push is soon)
_YIELD_EVERY = 50  # users decided / fanned out between yields to the event loop (~1-2 ms)
_DEFAULT_PREFS = Preferences()
_ANYONE = AudienceQuery()  # a query that needs nothing but attributes


def outcome_of(decision: Decision) -> tuple[str, tuple[str, ...] | None]:
    """The one outcome recorded for a user, and the edges that push it live now
    (None: every edge; empty: none)."""
    live = tuple(e for e in EDGES if decision.edges.get(e) is Outcome.PUSHED)
    if live:
        return Outcome.PUSHED.value, (None if len(live) == len(EDGES) else live)
    others = [o for o in decision.edges.values() if o is not Outcome.SUPPRESSED_CATEGORY]
    return (others[0].value if others else Outcome.SUPPRESSED_CATEGORY.value), ()


@dataclass
class Plan:
    """What a job's stored request means for sending (rebuilt from the job on any node)."""

    content: Content
    base: dict[str, Any]  # the fields every user's item shares (category, priority, media)
    notice: Notice
    collapse_key: str | None
    expires_at: float | None
    local: LocalTime | None = None
    best: bool = False
    users: list[str] | None = None  # an explicit list, or
    query: AudienceQuery | None = None  # the audience, paged from the store
    attributes: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.attributes = self.content.personal


class Sender:
    """A node's scheduler and sender (see the module doc). ``start`` runs the loop;
    tests call :meth:`step` with a fake clock instead of waiting."""

    def __init__(self, node: Node, settings: NotifySettings, audience: AudienceSettings,
                 rules: Rules) -> None:
        self.node = node
        self.settings = settings
        self.audience = audience
        self.rules = rules
        # unique per run: a restarted node resumes its own jobs once their lease expires
        self.owner = f"{node.name}/{secrets.token_hex(4)}"
        self._tasks = TaskSet("sender")
        self._lock = asyncio.Lock()  # steps never overlap on one node
        self._wake = asyncio.Event()
        self._failing = False
        # the users connected to this node now (Presence.local_users), set by the app:
        # a job sends to those of them in its audience first
        self.online: Callable[[], Sequence[str]] | None = None

    # -- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks.spawn(self._loop())

    async def close(self) -> None:
        await self._tasks.close(grace=0)

    def kick(self) -> None:
        """Look for due work now (a job was just created), not at the next interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
                if self._failing:
                    log.info("sender: the store answers again")
                self._failing = False
            except TidingsError as e:
                if not self._failing:
                    log.warning("sender: %s; retrying every %.1fs", e.message,
                                self.settings.schedule_interval)
                self._failing = True
            except Exception:  # our bug: logged, and the scheduler goes on
                log.exception("sender: a step failed")
            try:
                async with asyncio.timeout(self.settings.schedule_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def step(self) -> int:
        """Send every job due now (up to :data:`MAX_JOBS_PER_STEP`) and fire one batch
        of due per-user deliveries; return how many users were recorded."""
        async with self._lock:
            store = self.node.store
            done = 0
            for _ in range(MAX_JOBS_PER_STEP):
                jobs = await store.job_claim(self.owner, lease=self.settings.lease, limit=1)
                if not jobs:
                    break
                try:
                    done += await self.run(jobs[0])
                except (BadRequest, TooLarge) as e:  # its request no longer passes the limits
                    log.error("sender: notification %s cancelled: %s", jobs[0].id, e.message)
                    await store.job_cancel(jobs[0].id)
            entries = await store.due_claim(self.owner, lease=self.settings.lease,
                                            limit=self.settings.due_batch)
            by_job: dict[str, list[str]] = {}
            for entry in entries:
                by_job.setdefault(entry.notification, []).append(entry.user)
            for nid, users in by_job.items():
                job = await store.job_get(nid)
                if job is None or job.status == "cancelled":
                    continue
                done += await self.send_chunk(job, self.plan(job), users, due=True)
            return done

    # -- one job ------------------------------------------------------------------------

    def plan(self, job: Job) -> Plan:
        """The sending plan of a job's stored request (validated when it was made)."""
        req = job.request
        content = Content.compile(title=req.get("title"), body=req.get("body"),
                                  data=req.get("data"), locales=req.get("locales"),
                                  max_templates=self.settings.max_templates,
                                  max_placeholders=self.settings.max_placeholders)
        notice = Notice(job.category, req.get("priority", "normal"),
                        None if job.expires_at is None else utc(job.expires_at))
        local = req.get("send_at_local")
        target = req["target"]
        users = target.get("users")
        query = None
        if "tags" in target:
            query = AudienceQuery(*parse_tag_selector(target["tags"], "tags", self.audience))
        elif "audience" in target:
            query = parse_audience(target["audience"], "audience", self.audience)
        return Plan(content,
                    {"category": job.category, "priority": req.get("priority", "normal"),
                     "media": req.get("media")},
                    notice, req.get("collapse_key"), job.expires_at,
                    None if local is None else parse_send_at_local(local),
                    bool(req.get("best_time")), users, query)

    async def run(self, job: Job) -> int:
        """Send ``job`` from its cursor to the end, chunk by chunk, while its lease holds."""
        store = self.node.store
        plan = self.plan(job)
        cursor = job.cursor
        done = 0
        if cursor is None:  # a fresh start (a resumed job already wrote its first chunks)
            done += await self._online_first(job, plan)
        while True:
            users, nxt = await self._page(job, plan, cursor)
            if users:
                done += await self.send_chunk(job, plan, users, due=False)
            if nxt is None:
                break
            if not await store.job_progress(job.id, self.owner, nxt, lease=self.settings.lease):
                return done  # cancelled, or the lease was lost to another node
            cursor = nxt
            await asyncio.sleep(0)  # let the node answer between chunks
        await store.job_finish(job.id, self.owner)
        return done

    async def _online_first(self, job: Job, plan: Plan) -> int:
        """Send first to the audience's users connected to this node, in small chunks,
        so they get it at once however large the audience; the paged pass that
        follows skips them (``deliver`` skips users already recorded). Other nodes'
        users wait for their page (documented in docs/notifications-sending.md)."""
        if self.online is None:
            return 0
        online = self.online()
        if not online:
            return 0
        if plan.users is not None:
            wanted = set(online)
            chosen = [u for u in plan.users if u in wanted]
        else:
            assert plan.query is not None
            profiles = await self.node.store._audience_profiles(sorted(online), plan.query)
            chosen = [p.user for p in profiles if matches(plan.query, p)]
        done = 0
        for i in range(0, len(chosen), ONLINE_CHUNK):
            done += await self.send_chunk(job, plan, chosen[i:i + ONLINE_CHUNK], due=False)
            await asyncio.sleep(0)
        return done

    async def _page(self, job: Job, plan: Plan, cursor: str | None
                    ) -> tuple[list[str], str | None]:
        size = self.audience.page_size
        if plan.users is not None:
            start = int(cursor) if cursor and cursor.isdigit() else 0
            end = start + size
            return plan.users[start:end], (str(end) if end < len(plan.users) else None)
        assert plan.query is not None
        page = await self.node.store.audience_page(plan.query, cursor=cursor, limit=size)
        return page.users, page.next

    # -- one chunk ----------------------------------------------------------------------

    def _prefs(self, docs: Mapping[str, dict[str, Any]], user: str) -> Preferences:
        doc = docs.get(user)
        if not doc:
            return _DEFAULT_PREFS
        try:
            return parse(doc, self.rules)
        except BadRequest:  # stored before the operator changed the rules: defaults
            return _DEFAULT_PREFS

    async def send_chunk(self, job: Job, plan: Plan, users: Sequence[str], *, due: bool
                         ) -> int:
        """Decide and write one chunk of users (``due``: fired from the due queue, so
        decided now whatever the schedule said); fan out; count the outcomes."""
        store = self.node.store
        now = self.node.clock.now()
        now_dt = utc(now)
        category = job.category
        docs = await store.preferences_many(users)
        capped = category in self.rules.caps or any(
            category in (d.get("caps") or {}) for d in docs.values())
        recent = await store.recent_pushes(users, category, now - DAY.total_seconds()) \
            if capped else {}
        attrs: dict[str, Mapping[str, Any]] = {}
        if plan.attributes:
            # the audience contract's batch read of profiles: attributes, one call a chunk
            for p in await store._audience_profiles(list(users), _ANYONE):
                attrs[p.user] = p.attributes
        engaged: Mapping[str, list[float]] = {}
        if plan.best and not due:
            engaged = await store.engagement_times(
                users, now - BEST_TIME_HISTORY.total_seconds())
        shared = None if plan.content.personal else self._fields(plan, {}, None)
        # everyone with default preferences and no recent push gets the same decision:
        # made once per chunk, not once per user
        plain: tuple[Decision, tuple[str, tuple[str, ...] | None]] | None = None
        deliveries = []
        for n, user in enumerate(users, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            prefs = self._prefs(docs, user)
            if not due and (plan.local is not None or plan.best):
                fire = self._fire_time(plan, prefs, engaged.get(user, ()), now_dt)
                if fire > now:
                    deliveries.append(Delivery(user, "scheduled", due_at=fire))
                    continue
            pushes = recent.get(user)
            if prefs is _DEFAULT_PREFS and not pushes:
                if plain is None:
                    first = decide(plan.notice, prefs, self.rules, [], now_dt)
                    plain = (first, outcome_of(first))
                decision, (state, edges) = plain
            else:
                decision = decide(plan.notice, prefs, self.rules,
                                  [utc(t) for t in pushes or ()], now_dt)
                state, edges = outcome_of(decision)
            fields = None
            if decision.inbox:
                fields = shared if shared is not None else self._fields(
                    plan, attrs.get(user, {}), prefs.locale)
            deliveries.append(Delivery(
                user, state, fields, edges,
                None if decision.hold_until is None else decision.hold_until.timestamp()))
        result = await store.deliver(job.id, deliveries, category=category,
                                     expires_at=plan.expires_at, collapse_key=plan.collapse_key,
                                     policy=self.node.policy, due=due)
        states = {d.user: d.state for d in deliveries}
        push = self.node.push
        if push is not None:  # live first: devices that are away get it from their platform
            items = {d.user: d.fields for d in deliveries}
            live = {u: f for u in result.recorded
                    if states[u] == Outcome.PUSHED.value and (f := items.get(u)) is not None}
            if live:
                ttl = DAY.total_seconds() if plan.expires_at is None else plan.expires_at - now
                await push.live_first(job.id, live, ttl=max(0, int(ttl)),
                                      collapse_key=plan.collapse_key)
        counted = Counter(states[user] for user in result.recorded)
        for outcome, n in counted.items():
            if outcome in OUTCOMES:
                self.node.metrics.inc("tidings_notification_outcomes_total", n,
                                      outcome=outcome)
        changes = result.changes
        for i in range(0, len(changes), _YIELD_EVERY):
            # a slice of the chunk's pushes in one bus call; the node answers others
            # between slices
            await self.node.fan_out([p for c in changes[i:i + _YIELD_EVERY]
                                     for p in c.publications])
            await asyncio.sleep(0)
        return len(result.recorded)

    def _fire_time(self, plan: Plan, prefs: Preferences, engaged: Sequence[float],
                   now: datetime) -> float:
        zone = prefs.zone(self.rules)
        if plan.local is not None:
            return local_fire_time(plan.local, zone, now).timestamp()
        return best_time([utc(t) for t in engaged], zone, now).timestamp()

    @staticmethod
    def _fields(plan: Plan, attributes: Mapping[str, Any], locale: str | None
                ) -> dict[str, Any]:
        rendered = plan.content.render(attributes, locale)
        return {"title": rendered.title or "", "body": rendered.body or "",
                "data": rendered.data, **plan.base}

