"""The notification contract: send jobs, per-user delivery, the due queue, push history.

A notification sent to an audience (issue 12) is a **job**: recorded when the
request is accepted, then sent chunk by chunk by whichever node holds its
lease, resumable after a crash, cancellable until sent. The rules every
backend keeps (``tests/store/test_notifications_contract.py``):

Jobs
  * ``job_create`` records a job as ``scheduled`` (due at ``due``) together
    with the notification's stats row (``stats`` / ``track`` /
    ``category_stats`` of the inbox contract see it, with ``targets`` the
    audience size counted at creation). With ``owner`` it is created
    ``sending`` instead, leased to ``owner`` for ``lease`` seconds (its creator
    sends it at once; nobody claims it while the lease holds, and another node
    resumes it if the creator dies). A repeated ``idempotency_key``
    (within the idempotency TTL) returns the first job and ``duplicate=True``
    and stores nothing.
  * ``job_claim`` hands a node at most ``limit`` jobs that are due now: a
    ``scheduled`` job whose ``due`` has come, or a ``sending`` job whose lease
    has expired (its node died). Each becomes ``sending`` with the caller's
    lease, atomically: of nodes claiming at once, at most one gets a job.
  * ``job_progress`` moves the job's audience ``cursor`` and renews the lease;
    ``job_finish`` makes it ``sent`` (``cursor`` None). Both are refused
    (False, nothing changed) unless the caller still holds an unexpired lease
    and the job is ``sending`` (a cancelled job stops at its next chunk).
  * ``job_requeue`` puts a ``sending`` job whose lease the caller holds back
    to ``scheduled`` at ``due``, its stored request replaced by ``request``
    and its cursor cleared (refused like ``job_progress``): a job in phases,
    like an experiment's test group, verdict and rest (``tidings.sending``),
    is claimed again for its next phase by exactly one node.
  * ``job_cancel`` cancels a ``scheduled`` or ``sending`` job, or a ``sent``
    one that still has due-queue entries (users held or waiting for their own
    time), and drops those entries (the users stay recorded ``held`` or
    ``scheduled``, and never get it). Any other job is returned unchanged; the
    caller reads its status.
  * ``jobs`` lists jobs with one status, oldest first (by ``created``, then
    id), paged by an opaque cursor.

Delivery (what makes a resumed send exactly once)
  * ``deliver`` writes one chunk of users, each with its own rendered fields
    and decided outcome, in one atomic step per user: the target is recorded
    with its state, and a user already recorded for this notification is
    skipped (so a chunk replayed after a crash sends nobody anything twice)
    unless the call is a due-queue firing (``due=True``) and the recorded state
    is ``held`` or ``scheduled``: then the new state replaces it and the
    user's due entry is removed.
  * A delivery with ``fields`` writes the inbox item exactly as
    :meth:`InboxStore.notify` does for one user (collapse, cap, stream entry
    with ``unread``, retained count; the item expires at ``expires_at``) and
    returns the publications. With ``edges`` None the stream entry is pushed
    on every edge; with some edges the entry carries ``"edges": [...]`` so the
    hub and recovery skip it on the others; with none (a silent outcome) no
    notification is appended but ``{"type": "silent", "ids": [id], "unread"}``
    (with ``replaces`` / ``pruned`` as a push has them) goes to
    ``users/{uid}/events``, so devices keep the count and their list exact
    without showing anything. One without
    writes no inbox item (``held`` / ``scheduled`` until they fire,
    ``suppressed_category``, ``expired``): a held notification is not unread
    until delivered.
  * A delivery with ``due_at`` adds a due-queue entry (notification, user)
    at that instant (``held``: the end of quiet hours; ``scheduled``: the
    user's local send time or best time).
  * A delivery whose ``edges`` is not empty (None included) records one live push for
    ``(user, category, now)`` for caps (:meth:`recent_pushes` reads them).
  * The job's ``outcomes`` count its targets by their current state.
  * A delivery's ``variant`` is recorded with the target; the first one
    recorded stays (a replayed chunk or a due-queue firing keeps it).
    ``variant_counts`` counts, per variant recorded for the notification's
    targets, ``targets``, the targets in each of :data:`TARGET_STATES`, and
    each of :data:`STAT_EVENTS` once per user (an event counts for the variant
    its user was given). Targets without a variant are not counted there.

Due queue
  * ``due_claim`` hands a node at most ``limit`` entries due now whose lease
    is free (never claimed, or its lease expired), each leased to the caller
    atomically: at most one node gets an entry at a time. An entry of a
    cancelled job is never handed out. The entry goes when ``deliver``
    (``due=True``) records the user's new state.

Engagement times (for ``best_time``)
  * ``engagement_times`` returns, for a chunk of users in one call, the
    instants of their recorded engagement (``opened`` / ``clicked``, the
    audience contract's ``engage``, any category) after ``since``.

Push history
  * ``recent_pushes`` returns, for a chunk of users in one call, the instants
    of their recorded live pushes in ``category`` after ``since`` (the caller
    asks for the last 24 h); older ones may be forgotten.

Every call raises :class:`tidings.errors.Unavailable` when the backend cannot
answer within its bound; none reports success for what was not stored. Times
are epoch seconds from the store's clock.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .inbox import STAT_EVENTS, UserChange
from .topics import PolicyFor

__all__ = [
    "JOB_STATUSES",
    "OUTCOMES",
    "TARGET_STATES",
    "DeliverResult",
    "Delivery",
    "DueEntry",
    "Job",
    "JobPage",
    "JobStatus",
    "NewJob",
    "NotificationStore",
    "variant_row",
]

JobStatus = Literal["scheduled", "sending", "sent", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("scheduled", "sending", "sent", "cancelled")
OUTCOMES = ("pushed", "held", "silent_quiet_hours", "silent_capped", "suppressed_category",
            "expired")
"""The public outcomes of one notification for one user (``tidings.policy.Outcome``)."""
TARGET_STATES = (*OUTCOMES, "scheduled")
"""What a target may be recorded as: an outcome, or ``scheduled`` (waiting for
the user's own send time in the due queue)."""


def variant_row(counts: Mapping[str, int]) -> dict[str, int]:
    """One variant's ``variant_counts`` entry from what a backend counted:
    every field present (zero when not counted), ``targets`` the sum of the
    states (each target is in exactly one)."""
    states = {s: int(counts.get(s, 0)) for s in TARGET_STATES}
    return {"targets": sum(states.values()), **states,
            **{e: int(counts.get(e, 0)) for e in STAT_EVENTS}}


@dataclass(frozen=True, slots=True)
class NewJob:
    """What ``job_create`` stores. ``request`` is the validated notify request
    as JSON-able data (content and locales, category, priority, ttl,
    collapse_key, the audience and schedule specs): the sender reads
    everything it needs from it, on any node, after a restart."""

    id: str
    category: str
    request: dict[str, Any]
    targets: int  # the audience size counted when the request was accepted
    due: float  # when the job starts (now for an immediate send)
    expires_at: float | None = None  # created + ttl; None: never


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    status: JobStatus
    category: str
    request: dict[str, Any]
    targets: int
    created: float
    due: float
    expires_at: float | None
    cursor: str | None  # the audience cursor of the next chunk (None: from the start)
    outcomes: dict[str, int] = field(default_factory=dict)  # target state -> users
    lease_owner: str | None = None
    lease_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The public view (``GET /v1/notifications/{id}``), without lease or request."""
        counts = {o: self.outcomes.get(o, 0) for o in OUTCOMES}
        return {"id": self.id, "status": self.status, "category": self.category,
                "created": self.created, "send_at": self.due, "expires_at": self.expires_at,
                "targets": self.targets, "outcomes": counts,
                "pending": self.outcomes.get("scheduled", 0)}


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    next: str | None  # pass as ``cursor`` for the next page; None at the end


# Not frozen: a send makes one per user, and a frozen dataclass's __init__ costs
# several times as much (about 1.5 us of the event loop a user).
@dataclass(slots=True)
class Delivery:
    """One user's part of a chunk: the state to record (one of
    :data:`TARGET_STATES`), the rendered inbox fields to write now (None: no
    inbox item), the edges that push it live now (None: every edge; empty:
    none, the item is written silently) and, for ``held`` / ``scheduled``,
    when the due queue fires it. ``variant`` names the A/B variant the user
    was given (:mod:`tidings.variants`), recorded with the target so the
    stats count per variant; None without variants."""

    user: str
    state: str
    fields: dict[str, Any] | None = None
    edges: tuple[str, ...] | None = ()
    due_at: float | None = None
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class DeliverResult:
    changes: list[UserChange]  # one per user whose inbox was written, in order: fan out
    recorded: list[str]  # users whose state this call recorded (skipped ones left out)


@dataclass(frozen=True, slots=True)
class DueEntry:
    notification: str
    user: str
    due: float


class NotificationStore(abc.ABC):
    """Send jobs, per-user delivery, the due queue and push history (see the module doc)."""

    @abc.abstractmethod
    async def job_create(self, job: NewJob, *, idempotency_key: str | None = None,
                         owner: str | None = None, lease: float = 0.0) -> tuple[Job, bool]:
        """Record ``job`` as ``scheduled`` (or ``sending``, leased to ``owner``);
        ``(job, duplicate)``."""

    @abc.abstractmethod
    async def job_get(self, job_id: str) -> Job | None:
        """The job with its current outcome counts, or None."""

    @abc.abstractmethod
    async def jobs(self, status: JobStatus, *, cursor: str | None = None, limit: int = 100
                   ) -> JobPage:
        """Jobs with ``status``, oldest first, at most ``limit``."""

    @abc.abstractmethod
    async def job_cancel(self, job_id: str) -> Job | None:
        """Cancel a scheduled or sending job (and its due entries); the job after, or None."""

    @abc.abstractmethod
    async def job_claim(self, owner: str, *, lease: float, limit: int = 1) -> list[Job]:
        """Due scheduled jobs and sending jobs with an expired lease, now leased to ``owner``."""

    @abc.abstractmethod
    async def job_progress(self, job_id: str, owner: str, cursor: str | None, *,
                           lease: float) -> bool:
        """Move the cursor and renew the lease for ``lease`` seconds; False if not held."""

    @abc.abstractmethod
    async def job_requeue(self, job_id: str, owner: str, request: dict[str, Any], *,
                          due: float) -> bool:
        """Back to ``scheduled`` at ``due`` with ``request`` and no cursor; False if
        the lease is not held."""

    @abc.abstractmethod
    async def job_finish(self, job_id: str, owner: str) -> bool:
        """Mark the job ``sent``; False if the lease is not held (or it was cancelled)."""

    @abc.abstractmethod
    async def deliver(self, notification_id: str, deliveries: Sequence[Delivery], *,
                      category: str, expires_at: float | None, collapse_key: str | None,
                      policy: PolicyFor, due: bool = False) -> DeliverResult:
        """Record and write one chunk of users (see "Delivery")."""

    @abc.abstractmethod
    async def variant_counts(self, notification_id: str) -> dict[str, dict[str, int]]:
        """Per variant name: ``{"targets": n, <each TARGET_STATE>: n, <each
        STAT_EVENT>: n}`` (see "Delivery"); empty without variants (or an
        unknown notification)."""

    @abc.abstractmethod
    async def due_claim(self, owner: str, *, lease: float, limit: int) -> list[DueEntry]:
        """Due-queue entries due now, leased to ``owner`` for ``lease`` seconds."""

    @abc.abstractmethod
    async def engagement_times(self, users: Sequence[str], since: float
                               ) -> Mapping[str, list[float]]:
        """Each user's engagement instants after ``since`` (users with none left out)."""

    @abc.abstractmethod
    async def recent_pushes(self, users: Sequence[str], category: str, since: float
                            ) -> Mapping[str, list[float]]:
        """Each user's live pushes in ``category`` after ``since`` (users with none left out)."""
