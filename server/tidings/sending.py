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
from .preferences import LIVE_EDGES, PLATFORMS, Preferences, Rules, parse
from .push.channel import EVERYWHERE, Route
from .rates import rates, variant_funnels, winner
from .schedule import BEST_TIME_HISTORY, LocalTime, best_time, local_fire_time, parse_send_at_local
from .store.base import OUTCOMES, AudienceQuery, Delivery, Job
from .store.contracts.audience import matches
from .variants import (
    Experiment,
    Variant,
    Variants,
    compile_variants,
    in_test_group,
    parse_experiment,
    parse_variants,
)

__all__ = ["MAX_JOBS_PER_STEP", "Plan", "Sender", "outcome_of", "route_of"]

log = logging.getLogger("tidings.sending")

MAX_JOBS_PER_STEP = 16  # jobs one scheduler step sends; more wait for the next step
ONLINE_CHUNK = 100  # users per chunk of the online-first pass (small: the first push is soon)
_YIELD_EVERY = 50  # users decided / fanned out between yields to the event loop (~1-2 ms)
_DEFAULT_PREFS = Preferences()
_ANYONE = AudienceQuery()  # a query that needs nothing but attributes


def outcome_of(decision: Decision) -> tuple[str, tuple[str, ...] | None]:
    """The one outcome recorded for a user, and the edges its stream entry names
    (None: every live edge; empty: no push, a silent entry). ``pushed`` when a
    live edge or a platform channel pushes it. A category the user keeps to
    platform channels (``["fcm"]``) names them: no live edge delivers the
    entry (``routed_away``), and the store counts the push for caps as any."""
    live = tuple(e for e in LIVE_EDGES if decision.edges.get(e) is Outcome.PUSHED)
    if live:
        return Outcome.PUSHED.value, (None if len(live) == len(LIVE_EDGES) else live)
    platforms = tuple(c for c in PLATFORMS if decision.platforms.get(c) is Outcome.PUSHED)
    if platforms:
        return Outcome.PUSHED.value, platforms
    others = [o for o in (*decision.edges.values(), *decision.platforms.values())
              if o is not Outcome.SUPPRESSED_CATEGORY]
    return (others[0].value if others else Outcome.SUPPRESSED_CATEGORY.value), ()


def route_of(decision: Decision) -> Route:
    """The platform channels a user's ``pushed`` decision allows, and the live
    edges it went on (see :class:`tidings.push.channel.Route`)."""
    kinds = frozenset(c for c in PLATFORMS if decision.platforms.get(c) is Outcome.PUSHED)
    live = frozenset(e for e in LIVE_EDGES if decision.edges.get(e) is Outcome.PUSHED)
    if len(live) == len(LIVE_EDGES) and len(kinds) == len(PLATFORMS):
        return EVERYWHERE
    return Route(None if len(kinds) == len(PLATFORMS) else kinds, live)


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
    variants: Variants | None = None  # A/B variants (issue 13), with per variant
    contents: dict[str, Content] = field(default_factory=dict)  # its content and
    bases: dict[str, dict[str, Any]] = field(default_factory=dict)  # its shared fields
    experiment: Experiment | None = None
    state: dict[str, Any] = field(default_factory=dict)  # the experiment's phase, stored
    attributes: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.attributes = self.content.personal or any(
            c.personal for c in self.contents.values())

    @property
    def winner(self) -> str | None:
        """The experiment's decided variant (None: no experiment, or not decided yet)."""
        return self.state.get("winner") if self.experiment is not None else None

    @property
    def testing(self) -> bool:
        """The experiment's first pass: only the test group is sent."""
        return self.experiment is not None and self.winner is None

    def variant_of(self, notification_id: str, user: str) -> Variant | None:
        """The variant ``user`` gets: the stable assignment, or, once an experiment
        has decided, the winner for everyone outside the test group."""
        if self.variants is None:
            return None
        if self.experiment is not None and self.winner is not None and not in_test_group(
                self.experiment, notification_id, user):
            return self.variants.named(self.winner)
        return self.variants.assign(notification_id, user)


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
        base = {"category": job.category, "priority": req.get("priority", "normal"),
                "media": req.get("media")}
        variants = experiment = None
        contents: dict[str, Content] = {}
        bases: dict[str, dict[str, Any]] = {}
        if req.get("variants") is not None:
            variants = parse_variants(req["variants"])
            contents = compile_variants(req, variants,
                                        max_templates=self.settings.max_templates,
                                        max_placeholders=self.settings.max_placeholders)
            bases = {v.name: {**base, "media": v.content.get("media", base["media"])}
                     for v in variants.items}
            if req.get("experiment") is not None:
                experiment = parse_experiment(req["experiment"])
        return Plan(content, base, notice, req.get("collapse_key"), job.expires_at,
                    None if local is None else parse_send_at_local(local),
                    bool(req.get("best_time")), users, query, variants, contents, bases,
                    experiment, dict(req.get("experiment_state") or {}))

    async def run(self, job: Job) -> int:
        """Send ``job`` from its cursor to the end, chunk by chunk, while its lease holds."""
        store = self.node.store
        plan = self.plan(job)
        if plan.testing and plan.state.get("phase") == "testing":
            return await self._decide(job, plan)  # the test group was sent; its time came
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
        if plan.testing:
            assert plan.experiment is not None
            now = self.node.clock.now()
            decide_at = now + plan.experiment.decide_after
            state = {"phase": "testing", "tested_at": now, "decide_at": decide_at}
            await store.job_requeue(job.id, self.owner,
                                    {**job.request, "experiment_state": state}, due=decide_at)
            return done
        await store.job_finish(job.id, self.owner)
        return done

    async def _decide(self, job: Job, plan: Plan) -> int:
        """An experiment's verdict, once, on the node that claimed the job: the
        significant winner by the metric (:func:`tidings.rates.winner`), else the
        best observed rate (ties: the earlier variant, so the control). It is
        stored with the job, which is due again now to send the winner to
        everyone not yet recorded (any node may claim it; a restart resumes it)."""
        assert plan.experiment is not None and plan.variants is not None
        metric = plan.experiment.metric
        counts = await self.node.store.variant_counts(job.id)
        # the funnel each variant has in its stats (GET .../stats), so both agree
        groups = variant_funnels(counts, plan.variants.names)
        chosen = winner(groups, metric)
        significant = chosen is not None
        if chosen is None:
            chosen = max(groups, key=lambda g: rates(g[1])[metric].rate)[0]
        now = self.node.clock.now()
        state = {**plan.state, "phase": "decided", "winner": chosen,
                 "significant": significant, "decided_at": now}
        if await self.node.store.job_requeue(job.id, self.owner,
                                             {**job.request, "experiment_state": state},
                                             due=now):
            log.info("sender: notification %s: variant %s wins by %s (%s)", job.id, chosen,
                     metric, "significant" if significant else "best observed")
            self.kick()
        return 0

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
        if plan.testing:  # an experiment's first pass: the others wait for the verdict
            assert plan.experiment is not None
            users = [u for u in users if in_test_group(plan.experiment, job.id, u)]
            if not users:
                return 0
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
        shared: dict[str | None, dict[str, Any]] = {}  # one rendering per variant

        def fields_of(user: str, prefs: Preferences, variant: str | None) -> dict[str, Any]:
            if (plan.content if variant is None else plan.contents[variant]).personal:
                return self._fields(plan, attrs.get(user, {}), prefs.locale, variant)
            got = shared.get(variant)
            if got is None:
                got = shared[variant] = self._fields(plan, {}, None, variant)
            return got

        # everyone with default preferences and no recent push gets the same decision:
        # made once per chunk, not once per user
        plain: tuple[Decision, tuple[str, tuple[str, ...] | None]] | None = None
        deliveries = []
        routes: dict[str, Route] = {}  # the platform channels, where not every one
        for n, user in enumerate(users, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            prefs = self._prefs(docs, user)
            chosen = plan.variant_of(job.id, user)
            variant = None if chosen is None else chosen.name
            if not due and (plan.local is not None or plan.best):
                fire = self._fire_time(plan, prefs, engaged.get(user, ()), now_dt)
                if fire > now:
                    deliveries.append(Delivery(user, "scheduled", due_at=fire,
                                               variant=variant))
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
                if (route := route_of(decision)) is not EVERYWHERE:
                    routes[user] = route
            fields = fields_of(user, prefs, variant) if decision.inbox else None
            deliveries.append(Delivery(
                user, state, fields, edges,
                None if decision.hold_until is None else decision.hold_until.timestamp(),
                variant))
        if plan.variants is not None:  # each variant's users together: the store
            deliveries.sort(key=lambda d: d.variant or "")  # encodes each rendering once
        result = await store.deliver(job.id, deliveries, category=category,
                                     expires_at=plan.expires_at, collapse_key=plan.collapse_key,
                                     policy=self.node.policy, due=due)
        states = {d.user: d.state for d in deliveries}
        push = self.node.push
        if push is not None:  # live first: devices that are away get it from their platform
            items = {d.user: d.fields for d in deliveries}
            live = {u: f for u in result.recorded
                    if states[u] == Outcome.PUSHED.value and (f := items.get(u)) is not None
                    and (u not in routes or routes[u].kinds != frozenset())}
            if live:
                ttl = DAY.total_seconds() if plan.expires_at is None else plan.expires_at - now
                await push.live_first(job.id, live, ttl=max(0, int(ttl)),
                                      collapse_key=plan.collapse_key, routes=routes)
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
    def _fields(plan: Plan, attributes: Mapping[str, Any], locale: str | None,
                variant: str | None = None) -> dict[str, Any]:
        """One user's inbox item fields (with ``variant``: that variant's content,
        and its name in the item, so the push and the MQTT payload carry it)."""
        content, base = ((plan.content, plan.base) if variant is None
                         else (plan.contents[variant], plan.bases[variant]))
        rendered = content.render(attributes, locale)
        out = {"title": rendered.title or "", "body": rendered.body or "",
               "data": rendered.data, **base}
        if variant is not None:
            out["variant"] = variant
        return out

